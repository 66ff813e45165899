"""Winograd F(2x2, 3x3) (``pdd.winograd``) computes what the modules compute, and runs where it should.

The reference is the modules themselves in float64 (conv, BatchNorm in eval with random
statistics, activation), never the transform formulas.

Mutations verified to fail here (each applied to ``src`` and reverted): one sign of the input
transform flipped (``d[1] + d[3]``); the output transform's second row as ``m[1] - m[2] + m[3]``;
the BatchNorm shift dropped; the bias added at a tile position other than (1, 1); ``eligible``
without its tiles condition (the 6x6 block then runs Winograd), and with a batch condition again
(``batch > 1``: a block's plan, kept per batch class, then depends on the batches it saw first);
the GEMM run in float64 for a single image (an image's bits then depend on its batch).
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
from pdd.winograd import WinogradConv, eligible

TOLERANCE = 1e-5  # of the reference's range; the transforms' float32 rounding is ~5e-7


ACTIVATIONS = {"none": lambda t: t, "relu": F.relu, "gelu": F.gelu}


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("grid", [(8, 10), (2, 2)])
def test_winograd_conv_equals_the_modules_in_float64(
    activation: str, batchnorm: bool, bias: bool, grid: tuple[int, int]
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
        actual = WinogradConv(conv, bn)(x, activation)
    assert actual.shape == reference.shape
    assert actual.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(actual, reference) <= TOLERANCE


def test_winograd_conv_refuses_a_residual_and_unknown_activations() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False).eval()
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad(), pytest.raises(ValueError, match="no residual"):
        WinogradConv(conv, None)(x, "relu", residual=torch.randn(2, 8, 4, 4))
    with torch.no_grad(), pytest.raises(ValueError, match="unsupported activation"):
        WinogradConv(conv, None)(x, "swish")


def _conv(**options: int) -> nn.Conv2d:
    settings = {"kernel_size": 3, "padding": 1, **options}
    return nn.Conv2d(256, 256, bias=False, **settings)


@pytest.mark.parametrize(
    ("conv", "size", "expected"),
    [
        (_conv(), [2, 256, 16, 16], True),
        (_conv(), [8, 512, 8, 6], False),  # 12 tiles an image: fewer than MIN_TILES
        (_conv(), [8, 512, 8, 8], True),  # 16 tiles, as many as MIN_TILES
        (_conv(), [1, 256, 8, 8], True),  # the batch is not asked
        (_conv(), [1, 256, 32, 32], True),
        (nn.Conv2d(1024, 1024, 3, padding=1, bias=False), [1, 1024, 8, 8], True),
        (_conv(), [64, 256, 4, 4], False),  # 4 tiles an image, however many images
        (_conv(), [2, 128, 16, 16], False),  # too few channels
        (_conv(), [2, 256, 15, 16], False),  # odd grid
        (_conv(stride=2), [2, 256, 16, 16], False),
        (_conv(dilation=2, padding=2), [2, 256, 16, 16], False),
        (_conv(groups=2), [2, 256, 16, 16], False),
        (_conv(padding=0), [2, 256, 16, 16], False),
        (nn.Conv2d(256, 256, 1, bias=False), [2, 256, 16, 16], False),
        (nn.ConvTranspose2d(256, 256, 3, padding=1, bias=False), [2, 256, 16, 16], False),
    ],
)
def test_eligible(conv: nn.Module, size: list[int], expected: bool) -> None:
    assert eligible(conv, size) is expected


BLOCKS = {
    "bottleneck": lambda: Bottleneck(512, 128),
    "de-bottleneck": lambda: DeBottleneck(512, 128),
}


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_packed_blocks_run_their_middle_conv_as_winograd_where_eligible(kind: str) -> None:
    """A block of 256-wide 3x3 convs: Winograd on an 8x8 grid (16 tiles) at batch 1 and 4 alike,
    the packed oneDNN call on a 6x6 grid (9 tiles); all equal to the block's modules in float64.
    The batch-1 plan is built after the batch-4 one, each kept per batch class."""
    torch.manual_seed(5)
    block = BLOCKS[kind]().eval()
    randomise_batchnorm(block)
    block = block.to(memory_format=torch.channels_last)
    reference_block = copy.deepcopy(block).double()
    cases = ((4, 8, WinogradConv), (1, 8, WinogradConv), (4, 6, packed_convs.FoldedConv))
    for batch, grid, kind_of_middle in cases:
        x = torch.randn(batch, 512, grid, grid).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            actual = block(x)
            plan = block._packs.plan(block, x, block._pack)
            with packed_convs.disabled():
                reference = reference_block(x.double())
        assert isinstance(plan.middle, kind_of_middle)
        assert relative_error(actual, reference) <= TOLERANCE


@pytest.mark.parametrize(("channels", "grid"), [(256, 32), (512, 16), (1024, 8)])
def test_an_image_gets_the_same_bits_alone_and_in_any_batch(channels: int, grid: int) -> None:
    """The GEMM over all images' tiles sums each row as it would for one image: an image's output
    is bit for bit the same alone, first, last or in the middle of batches of 2, 3, 5 and 8, at
    the shapes ``pdd`` runs at 256 px (so a score does not depend on the batch it is scored in)."""
    torch.manual_seed(11)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    bn = nn.BatchNorm2d(channels).eval()
    randomise_batchnorm(bn)
    winograd_conv = WinogradConv(conv, bn)
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
        assert isinstance(block._packs.plan(block, x, block._pack).middle, WinogradConv)
