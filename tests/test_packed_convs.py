"""Prepacked conv + BatchNorm inference (``pdd.packed_convs``) computes what the modules compute.

The reference is the modules themselves run in float64 (conv, then BatchNorm in eval, then the
activation and the residual addition), never our folding formula. BatchNorm statistics and affine
parameters are random, so a folding that ignores any of them shows.

Mutations verified to fail here (each applied to ``src`` and reverted): the BN shift without its
running mean; the scale without ``eps`` (one case only: eps is 1e-5 of variances of 0.5-2); the
transposed conv's scale along its input channels; the ReLU after the residual dropped; the pack
stamp without the tensors' version counters; the batch class left out of the pack key.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from float64_reference import randomise_batchnorm, relative_error
from torch import Tensor, nn

from pdd import packed_convs
from pdd.models.blocks import Adapter, Bottleneck, DeBottleneck
from pdd.packed_convs import FoldedConv, output_size, usable

TOLERANCE = 1e-5  # of the reference's range; float32 rounding of a folded conv is ~1e-6


CONVS = {
    "1x1": lambda: nn.Conv2d(16, 24, 1, bias=False),
    "3x3 stride 2": lambda: nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False),
    "3x3 dilation 2": lambda: nn.Conv2d(16, 24, 3, padding=2, dilation=2, bias=False),
    "1x1 with bias": lambda: nn.Conv2d(16, 24, 1, bias=True),
    "3x3 depthwise with bias": lambda: nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=True),
    "2x2 transposed stride 2": lambda: nn.ConvTranspose2d(16, 24, 2, stride=2, bias=False),
}


ACTIVATIONS = {"none": lambda t: t, "relu": F.relu, "gelu": F.gelu, "swish": F.silu}


@pytest.mark.parametrize("kind", list(CONVS))
@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_folded_conv_equals_the_modules_in_float64(
    kind: str, activation: str, batchnorm: bool, residual: bool, batch: int
) -> None:
    """act(BN(conv(x)) [+ r]) of the modules, in float64, for every conv kind and post-op."""
    if residual and kind.endswith("transposed stride 2"):
        pytest.skip("residuals are fused into plain convolutions only")
    _check_folded_conv(kind, activation, batchnorm, residual, batch)


@pytest.mark.parametrize("kind", ["3x3 depthwise with bias", "1x1", "2x2 transposed stride 2"])
@pytest.mark.parametrize("batchnorm", [True, False])
def test_folded_conv_with_silu_equals_the_modules_in_float64(kind: str, batchnorm: bool) -> None:
    """silu(BN(conv(x))): VMamba's depthwise conv + SiLU; a residual with SiLU is refused."""
    _check_folded_conv(kind, "swish", batchnorm, residual=False, batch=2)
    conv = CONVS["1x1"]().eval()
    x = torch.randn(1, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    folded = FoldedConv(conv, None, list(x.shape))
    with torch.no_grad(), pytest.raises(ValueError, match="without SiLU"):
        folded(x, "swish", residual=torch.randn(1, 24, 4, 4))


def _check_folded_conv(
    kind: str, activation: str, batchnorm: bool, residual: bool, batch: int
) -> None:
    torch.manual_seed(3)
    conv = CONVS[kind]().eval()
    bn = nn.BatchNorm2d(conv.out_channels).eval() if batchnorm else None
    if bn is not None:
        randomise_batchnorm(bn)
    x = torch.randn(batch, 16, 10, 10).contiguous(memory_format=torch.channels_last)
    out_shape = output_size(conv, list(x.shape))
    r = torch.randn(out_shape).contiguous(memory_format=torch.channels_last) if residual else None

    with torch.no_grad():
        reference = conv.double()(x.double())
        if bn is not None:
            reference = bn.double()(reference)
        if r is not None:
            reference = reference + r.double()
        reference = ACTIVATIONS[activation](reference)
        conv.float()
        if bn is not None:
            bn.float()
        folded = FoldedConv(conv, bn, list(x.shape))
        actual = folded(x, activation, residual=r)

    assert list(actual.shape) == out_shape == list(reference.shape)
    assert relative_error(actual, reference) <= TOLERANCE


BLOCKS = {
    "bottleneck": lambda: Bottleneck(32, 16, stride=2),
    "bottleneck, identity shortcut": lambda: Bottleneck(64, 16),
    "de-bottleneck, upsampling": lambda: DeBottleneck(32, 8, upsample=True),
    "de-bottleneck, projection": lambda: DeBottleneck(32, 16),
    "adapter, projection": lambda: Adapter(32, 48),
    "adapter, identity": lambda: Adapter(32, 32),
}


def _block(kind: str) -> nn.Module:
    torch.manual_seed(5)
    block = BLOCKS[kind]().eval()
    randomise_batchnorm(block)
    return block.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("kind", list(BLOCKS))
@pytest.mark.parametrize("batch", [1, 2])
def test_packed_blocks_equal_their_modules_in_float64(kind: str, batch: int) -> None:
    """A residual block at inference (packed) equals the same block run by its modules in float64."""
    block = _block(kind)
    x = torch.randn(batch, block.body[0].in_channels, 8, 8).contiguous(
        memory_format=torch.channels_last
    )
    with torch.inference_mode():
        assert usable(x, block)
        actual = block(x)
    assert len(block._packs) == 1, "the packed path was not taken"
    reference_block = copy.deepcopy(block).double()
    with torch.inference_mode(), packed_convs.disabled():
        reference = reference_block(x.double())
    assert relative_error(actual, reference) <= TOLERANCE


def test_a_pack_follows_new_weights_and_statistics() -> None:
    """Loading other weights, or changing a BN statistic in place, rebuilds the pack."""
    block = _block("de-bottleneck, upsampling")
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)

    def both() -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            packed = block(x)
            with packed_convs.disabled():
                eager = block(x)
        return packed, eager

    first, _ = both()
    other = _block("de-bottleneck, upsampling")
    randomise_batchnorm(other, seed=9)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    block.load_state_dict(other.state_dict())
    packed, eager = both()
    assert relative_error(packed, eager) <= TOLERANCE
    assert relative_error(first, eager) > 1e-2, "the new weights should change the output"

    with torch.no_grad():
        block.body[4].running_var.mul_(4.0)  # the transposed conv's BatchNorm
    packed, eager = both()
    assert relative_error(packed, eager) <= TOLERANCE


def test_packs_are_kept_per_batch_class_and_bounded() -> None:
    """Batch 1 and larger batches get their own pack; at most MAX_PACKS are kept."""
    block = _block("bottleneck")
    with torch.inference_mode():
        for batch in (1, 3, 5, 1):
            block(torch.randn(batch, 32, 8, 8).contiguous(memory_format=torch.channels_last))
        assert len(block._packs) == 2
        block(torch.randn(2, 32, 12, 12).contiguous(memory_format=torch.channels_last))
        assert len(block._packs) == packed_convs.MAX_PACKS == 2
        keys = list(block._packs._plans)
    assert [key[0] for key in keys] == [1, 2] and keys[-1][2:4] == (12, 12)


def test_packing_is_not_used_where_it_would_change_more_than_rounding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Training mode, recorded autograd, float64, autocast, tracing, the two switches, and a
    torch without the operators."""
    block = _block("bottleneck")
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert usable(x, block)
        assert not usable(x.double(), block)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not usable(x, block)
        with packed_convs.disabled():
            assert not usable(x, block)
        monkeypatch.setenv("PDD_PACKED_CONVS", "0")
        assert not usable(x, block)
        monkeypatch.delenv("PDD_PACKED_CONVS")
        with monkeypatch.context() as patch:
            patch.setattr(packed_convs, "_operators_present", lambda: False)
            assert not usable(x, block), "a torch build without oneDNN's fused operators"
        block.train()
        assert not usable(x, block)
        block.eval()
    assert not usable(x, block), "parameters that require grad, with grad enabled"
    with torch.no_grad():
        traced = torch.jit.trace(block, x, check_trace=False)
    assert "mkldnn" not in str(traced.inlined_graph)
    assert len(block._packs) == 0


def test_copies_and_pickles_start_without_packs() -> None:
    block = _block("adapter, projection")
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = block(x)
    assert len(block._packs) == 1
    for clone in (copy.deepcopy(block), pickle.loads(pickle.dumps(block))):
        assert len(clone._packs) == 0
        with torch.inference_mode():
            assert torch.equal(clone(x), expected)
        assert len(clone._packs) == 1
