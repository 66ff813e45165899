"""Winograd F(2x2, 3x3) and F(4x4, 3x3) (``pdd.winograd``) compute what the modules compute, and
run where they should.

The reference is the modules themselves in float64 (conv, BatchNorm in eval with random
statistics, activation), never the transform formulas.

Mutations verified to fail here (each applied to ``src`` and reverted): one sign of the F(2x2)
input transform flipped (``d[1] + d[3]``); the F(2x2) output transform's second row as
``m[1] - m[2] + m[3]``; in F(4x4), ``d[4] + d[3]`` for ``d[4] - d[3]`` in the input transform,
row 4's ``alpha=-2`` as ``2``, the output transform's weight 8 as 4, and a 1/5 for a 1/6 in its
filter transform; the BatchNorm shift dropped; the bias added at a tile position other than
(1, 1); ``output_tile`` without its tiles condition (the 6x6 block then runs Winograd), and
with a batch condition again (``batch > 1``: a block's plan, kept per batch class, then depends on
the batches it saw first); the GEMM run in float64 for a single image (an image's bits then
depend on its batch); in ``_transformed_filter``, the BatchNorm scale left out, the column
transform's input flipped, and the last chunk of input channels skipped.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from float64_reference import randomise_batchnorm, relative_error
from torch import nn

from pdd import packed_convs, winograd
from pdd.models.blocks import Bottleneck, DeBottleneck
from pdd.winograd import WinogradConv, output_tile

# Of the reference's range. Measured at 16 channels: F(2x2) ~1e-7, F(4x4) ~3e-6 (its filter
# transform has thirds and its output transform weights up to 8); the direct convolution ~1e-6.
TOLERANCE = {2: 1e-5, 4: 2e-5}


ACTIVATIONS = {"none": lambda t: t, "relu": F.relu, "gelu": F.gelu}


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("tile", "grid"), [(2, (8, 10)), (2, (2, 2)), (4, (8, 12)), (4, (4, 4))])
def test_winograd_conv_equals_the_modules_in_float64(
    activation: str, batchnorm: bool, bias: bool, tile: int, grid: tuple[int, int]
) -> None:
    """act(BN(conv3x3(x))) of the modules, in float64; rectangular and single-tile grids."""
    torch.manual_seed(3)
    conv = nn.Conv2d(16, 24, 3, padding=1, bias=bias).eval()
    bn = nn.BatchNorm2d(24).eval() if batchnorm else None
    if bn is not None:
        randomise_batchnorm(bn)
    x = torch.randn(3, 16, *grid).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = conv.double()(x.double())
        if bn is not None:
            reference = bn.double()(reference)
        reference = ACTIVATIONS[activation](reference)
        conv.float()
        if bn is not None:
            bn.float()
        actual = WinogradConv(conv, bn, tile)(x, activation)
    assert actual.shape == reference.shape
    assert actual.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(actual, reference) <= TOLERANCE[tile]


def test_winograd_conv_refuses_a_residual_and_unknown_activations() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False).eval()
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad(), pytest.raises(ValueError, match="no residual"):
        WinogradConv(conv, None)(x, "relu", residual=torch.randn(2, 8, 4, 4))
    with torch.no_grad(), pytest.raises(ValueError, match="unsupported activation"):
        WinogradConv(conv, None)(x, "swish")
    with pytest.raises(ValueError, match="2 or 4"):
        WinogradConv(conv, None, 3)


def _conv(**options: int) -> nn.Conv2d:
    settings = {"kernel_size": 3, "padding": 1, **options}
    return nn.Conv2d(256, 256, bias=False, **settings)


@pytest.mark.parametrize(
    ("conv", "size", "expected"),
    [
        (_conv(), [2, 256, 16, 16], 4),  # 16 4x4 tiles, as many as MIN_TILES
        (_conv(), [1, 256, 32, 32], 4),
        (_conv(), [8, 512, 8, 8], 2),  # 4 4x4 tiles, 16 2x2 tiles
        (_conv(), [1, 256, 8, 8], 2),  # the batch is not asked
        (_conv(), [8, 512, 12, 12], 2),  # 9 4x4 tiles
        (_conv(), [8, 512, 16, 12], 2),  # 12 4x4 tiles, 48 2x2 tiles
        (_conv(), [8, 512, 12, 20], 2),  # 20 rows: 3 x 5 4x4 tiles, 15 of them
        (_conv(), [8, 512, 16, 20], 4),  # 4 x 5 4x4 tiles: rows times columns counted
        (_conv(), [8, 512, 8, 6], None),  # 12 2x2 tiles an image: fewer than MIN_TILES
        (_conv(), [2, 256, 18, 16], 2),  # 18 rows: 4x4 tiles do not divide the grid
        (nn.Conv2d(1024, 1024, 3, padding=1, bias=False), [1, 1024, 8, 8], 2),
        (_conv(), [64, 256, 4, 4], None),  # 4 tiles an image, however many images
        (_conv(), [2, 128, 16, 16], None),  # too few channels
        (_conv(), [2, 256, 15, 16], None),  # odd grid
        (_conv(stride=2), [2, 256, 16, 16], None),
        (_conv(dilation=2, padding=2), [2, 256, 16, 16], None),
        (_conv(groups=2), [2, 256, 16, 16], None),
        (_conv(padding=0), [2, 256, 16, 16], None),
        (nn.Conv2d(256, 256, 1, bias=False), [2, 256, 16, 16], None),
        (nn.ConvTranspose2d(256, 256, 3, padding=1, bias=False), [2, 256, 16, 16], None),
    ],
)
def test_output_tile(conv: nn.Module, size: list[int], expected: int | None) -> None:
    assert output_tile(conv, size) == expected


BLOCKS = {
    "bottleneck": lambda: Bottleneck(512, 128),
    "de-bottleneck": lambda: DeBottleneck(512, 128),
}


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_packed_blocks_run_their_middle_conv_as_winograd_where_eligible(kind: str) -> None:
    """A block of 256-wide 3x3 convs: F(4x4) on a 16x16 grid (16 tiles), F(2x2) on an 8x8 grid
    (16 tiles) at batch 1 and 4 alike, the packed oneDNN call on a 6x6 grid (9 tiles); all equal
    to the block's modules in float64. The batch-1 plan is built after the batch-4 one, each kept
    per batch class."""
    torch.manual_seed(5)
    block = BLOCKS[kind]().eval()
    randomise_batchnorm(block)
    block = block.to(memory_format=torch.channels_last)
    reference_block = copy.deepcopy(block).double()
    cases = ((2, 16, 4), (1, 16, 4), (4, 8, 2), (1, 8, 2), (4, 6, None))
    for batch, grid, tile in cases:
        x = torch.randn(batch, 512, grid, grid).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            actual = block(x)
            plan = block._packs.plan(block, x, block._pack)
            with packed_convs.disabled():
                reference = reference_block(x.double())
        if tile is None:
            assert isinstance(plan.middle, packed_convs.FoldedConv)
        else:
            assert isinstance(plan.middle, WinogradConv) and plan.middle.tile == tile
        assert relative_error(actual, reference) <= TOLERANCE[tile or 2]


@pytest.mark.parametrize(
    ("channels", "grid", "tile"), [(256, 32, 4), (512, 16, 4), (1024, 8, 2), (512, 16, 2)]
)
def test_an_image_gets_the_same_bits_alone_and_in_any_batch(
    channels: int, grid: int, tile: int
) -> None:
    """The GEMM over all images' tiles sums each row as it would for one image, and each transform
    step rounds alike wherever an element falls: an image's output is bit for bit the same alone,
    first, last or in the middle of batches of 2, 3, 5 and 8, at the shapes and tiles ``pdd`` runs
    at 256 px (so a score does not depend on the batch it is scored in)."""
    torch.manual_seed(11)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    bn = nn.BatchNorm2d(channels).eval()
    randomise_batchnorm(bn)
    winograd_conv = WinogradConv(conv, bn, tile)
    images = torch.randn(8, channels, grid, grid).relu_()
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        alone = [winograd_conv(images[i : i + 1], "relu") for i in range(len(images))]
        for batch in (2, 3, 5, 8):
            out = winograd_conv(images[:batch], "relu")
            for i in range(batch):
                assert torch.equal(out[i : i + 1], alone[i]), (batch, i)


def test_the_channel_threshold_is_read_when_a_block_is_packed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``MIN_CHANNELS`` and ``MIN_TILES`` decide: a small block runs Winograd once they allow it."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 8)
    monkeypatch.setattr(winograd, "MIN_TILES", 4)
    block = Bottleneck(64, 8).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 64, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        block(x)
        middle = block._packs.plan(block, x, block._pack).middle
        assert isinstance(middle, WinogradConv) and middle.tile == 2  # one 4x4 tile, four 2x2
