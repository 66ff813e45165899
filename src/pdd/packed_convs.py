"""Frozen convolution + BatchNorm pairs as single oneDNN calls with prepacked weights (CPU inference).

At inference a convolution followed by BatchNorm (eval) is one affine map. Folded into the
convolution's weight and bias, it saves a pass over the activation, and oneDNN applies the ReLU or
GELU and the residual addition that follow inside the same call. PyTorch's eager convolution also
reorders its weight into oneDNN's blocked layout on every call; reordered once here ("prepacked"),
it is read as stored. Measured on the AMD EPYC with AVX-512 (benchmarks/README.md, "Prepacked
convolutions"): Wide-ResNet-50-2 192 -> 152 ms/image at batch 1 and 154 -> 145 at batch 8, a
student 0.77x and 0.96x, a whole ``pdd`` forward 0.85x and 0.96x. The operators are PyTorch's own
oneDNN ones (``torch.ops.mkldnn``, those inductor's CPU freezing emits); a build without them
runs the modules as they are.

Taken only where nothing but float32 rounding can tell the difference (``usable``): float32 CPU
tensors, the module in eval mode, no autograd graph recorded, no autocast, oneDNN present and
enabled, and not switched off (``PDD_PACKED_CONVS=0``, or ``disabled()``). The results differ from
the eager modules' by float32 rounding (a few 1e-6 of a feature's range).

In a residual block the middle 3x3 convolution runs instead as Winograd F(4x4, 3x3) or F(2x2, 3x3)
(``pdd.winograd``) where its fewer multiplies were measured to repay its transforms: 256 channels
or more and 16 tiles an image or more (``pdd.winograd.output_tile``). The choice never asks the
batch, so the plan a block keeps for a batch class does not depend on the batches it saw first.

oneDNN picks the prepacked layout for the input shape it is told: a pack made for batch 1 runs
batch 8 1.1x slower than eager, one made for batch 8 runs batch 1 1.6x slower. So each block keeps one pack per
batch class (1, or more) and grid, at most ``MAX_PACKS``, each a copy of the block's weights in
oneDNN's layout; a pack remembers the storage and version counter of every tensor it was made
from and is rebuilt when one changes (``load_state_dict``, an optimiser step, ``.to()``).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdd import winograd

__all__ = [
    "MAX_PACKS",
    "FoldedConv",
    "PackedResidual",
    "Packs",
    "disabled",
    "enabled",
    "output_size",
    "shortcut_pair",
    "usable",
]

MAX_PACKS = 2
"""Packs a block keeps (least recently used dropped): batch 1 and one larger batch class."""

_switched_off = 0

Plan = TypeVar("Plan")


def enabled() -> bool:
    """Whether packing may be used at all: ``PDD_PACKED_CONVS`` is not ``0`` and no ``disabled()``."""
    return _switched_off == 0 and os.environ.get("PDD_PACKED_CONVS", "1") != "0"


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block, every module runs its eager convolutions (references, benchmarks)."""
    global _switched_off
    _switched_off += 1
    try:
        yield
    finally:
        _switched_off -= 1


def usable(x: Tensor, module: nn.Module) -> bool:
    """Whether ``module`` may run packed on input ``x``: see the module docstring."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and not module.training
        and enabled()
        and torch.backends.mkldnn.enabled
        and _operators_present()
        and not torch.is_autocast_enabled("cpu")
        and not _tracing()
        and not (
            torch.is_grad_enabled()
            and (x.requires_grad or any(p.requires_grad for p in module.parameters()))
        )
    )


@functools.cache
def _operators_present() -> bool:
    """PyTorch built with oneDNN and its fused convolution operators."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        for name in (
            "_convolution_pointwise",
            "_convolution_transpose_pointwise",
            "_reorder_convolution_weight",
            "_reorder_convolution_transpose_weight",
        ):
            getattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _tracing() -> bool:
    """Traced, scripted, compiled or exported graphs keep the modules' own operations."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


def output_size(conv: nn.Conv2d | nn.ConvTranspose2d, size: Sequence[int]) -> list[int]:
    """[B, C, H, W] of ``conv``'s output for an input of ``size``."""
    grid = []
    for i, extent in enumerate(size[2:]):
        k, s, p, d = (
            conv.kernel_size[i],
            conv.stride[i],
            conv.padding[i],
            conv.dilation[i],
        )
        if isinstance(conv, nn.ConvTranspose2d):
            grid.append(
                (extent - 1) * s - 2 * p + d * (k - 1) + conv.output_padding[i] + 1
            )
        else:
            grid.append((extent + 2 * p - d * (k - 1) - 1) // s + 1)
    return [size[0], conv.out_channels, *grid]


class FoldedConv:
    """A ``Conv2d`` or ``ConvTranspose2d`` and the eval BatchNorm after it (if any), as one oneDNN
    convolution whose weight is prepacked for inputs of ``input_size`` [B, C, H, W]."""

    def __init__(
        self,
        conv: nn.Conv2d | nn.ConvTranspose2d,
        bn: nn.BatchNorm2d | None,
        input_size: Sequence[int],
    ) -> None:
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        dtype = conv.weight.dtype
        # Folded in float64 and rounded once, so each folded weight is the nearest float32.
        weight = conv.weight.detach().double()
        bias = None if conv.bias is None else conv.bias.detach().double()
        if bn is not None:
            scale = bn.weight.detach().double() / torch.sqrt(
                bn.running_var.double() + bn.eps
            )
            # A transposed conv's weight is [in, out / groups, kh, kw]: its outputs are dim 1.
            shape = (1, -1, 1, 1) if self.transposed else (-1, 1, 1, 1)
            weight = weight * scale.reshape(shape)
            shift = bn.bias.detach().double() - bn.running_mean.double() * scale
            bias = shift if bias is None else bias * scale + shift
        weight = weight.to(dtype).contiguous(memory_format=torch.channels_last)
        self.bias = None if bias is None else bias.to(dtype)
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        size = list(input_size)
        if self.transposed:
            self.output_padding = list(conv.output_padding)
            self.weight = torch.ops.mkldnn._reorder_convolution_transpose_weight(
                weight,
                self.padding,
                self.output_padding,
                self.stride,
                self.dilation,
                self.groups,
                size,
            )
        else:
            self.weight = torch.ops.mkldnn._reorder_convolution_weight(
                weight, self.padding, self.stride, self.dilation, self.groups, size
            )

    def __call__(
        self, x: Tensor, activation: str = "none", residual: Tensor | None = None
    ) -> Tensor:
        """conv(x) (+ ``residual``), then ``activation``: ``"none"``, ``"relu"``, ``"gelu"``
        (exact, erf-based, as ``nn.GELU()``), or without a residual ``"swish"`` (SiLU)."""
        algorithm = "none" if activation == "gelu" else ""
        if residual is not None:
            if self.transposed or activation == "swish":
                raise ValueError(
                    "a residual is fused into plain convolutions without SiLU only"
                )
            # oneDNN fuses a ReLU after the addition, not a GELU: that one follows separately.
            fused = activation if activation == "relu" else None
            out = torch.ops.mkldnn._convolution_pointwise.binary(
                x,
                residual.contiguous(memory_format=torch.channels_last),
                self.weight,
                self.bias,
                *self._geometry(),
                "add",
                1.0,
                fused,
                [],
                "",
            )
            return F.gelu(out) if activation == "gelu" else out
        if self.transposed:
            padding, stride, dilation, groups = self._geometry()
            return torch.ops.mkldnn._convolution_transpose_pointwise(
                x,
                self.weight,
                self.bias,
                padding,
                self.output_padding,
                stride,
                dilation,
                groups,
                activation,
                [],
                algorithm,
            )
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, *self._geometry(), activation, [], algorithm
        )

    def _geometry(self) -> tuple[list[int], list[int], list[int], int]:
        """Padding, stride, dilation and groups, in the operators' argument order."""
        return self.padding, self.stride, self.dilation, self.groups


ConvBN = tuple[nn.Conv2d | nn.ConvTranspose2d, nn.BatchNorm2d | None]


class PackedResidual:
    """A residual block ``act(last(act(middle(act(first(x))))) + shortcut(x))`` of three conv (+ BN)
    pairs and an optional conv (+ BN) shortcut, packed for inputs of ``input_size``: the ResNet
    bottleneck, the reverse-distillation de-bottleneck and the feature adapter."""

    def __init__(
        self, body: Sequence[ConvBN], shortcut: ConvBN | None, input_size: Sequence[int]
    ) -> None:
        if len(body) != 3:
            raise ValueError(
                f"a packed residual block has 3 convolutions, got {len(body)}"
            )
        convs: list[FoldedConv | winograd.WinogradConv] = []
        size = list(input_size)
        for conv, bn in body:
            # The middle 3x3 convolution as Winograd where that pays (``pdd.winograd``).
            tile = winograd.output_tile(conv, size) if len(convs) == 1 else None
            convs.append(
                FoldedConv(conv, bn, size) if tile is None else winograd.WinogradConv(conv, bn, tile)
            )
            size = output_size(conv, size)
        self.first, self.middle, self.last = convs
        self.shortcut = None if shortcut is None else FoldedConv(*shortcut, input_size)

    def __call__(self, x: Tensor, activation: str) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        inner = self.middle(self.first(x, activation), activation)
        return self.last(inner, activation, residual=identity)


def shortcut_pair(shortcut: nn.Module) -> ConvBN | None:
    """A block's shortcut as (conv, BN or None), or None for the identity."""
    if isinstance(shortcut, nn.Identity):
        return None
    if isinstance(shortcut, (nn.Conv2d, nn.ConvTranspose2d)):
        return shortcut, None
    if isinstance(shortcut, nn.Sequential) and len(shortcut) == 2:
        return shortcut[0], shortcut[1]
    raise TypeError(f"cannot pack a shortcut of type {type(shortcut).__name__}")


class Packs(Generic[Plan]):
    """A block's packed plans by batch class and grid, rebuilt when the block's tensors change.

    Copies and pickles of a module start with no packs (they hold oneDNN tensors, and the copy's
    weights are other tensors anyway).
    """

    def __init__(self) -> None:
        self._plans: OrderedDict[
            tuple[int, ...], tuple[tuple[tuple[int, int], ...], Plan]
        ] = OrderedDict()

    def plan(
        self,
        module: nn.Module,
        x: Tensor,
        build: Callable[[list[int]], Plan],
        *extra_key: int,
    ) -> Plan:
        """The plan ``build([B, C, H, W])`` made for ``x``'s batch class and grid, current with
        ``module``'s parameters and buffers; ``extra_key`` separates plans of one input shape."""
        batch, channels, height, width = x.shape
        key = (min(batch, 2), channels, height, width, *extra_key)
        state = tuple(map(_stamp, _tensors(module)))
        found = self._plans.get(key)
        if found is not None and found[0] == state:
            self._plans.move_to_end(key)
            return found[1]
        self._plans.pop(key, None)
        while len(self._plans) >= MAX_PACKS:
            self._plans.popitem(last=False)
        with torch.no_grad():
            plan = build([batch, channels, height, width])
        self._plans[key] = (state, plan)
        return plan

    def clear(self) -> None:
        """Drop every pack (their memory is freed)."""
        self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)

    def __deepcopy__(self, memo: dict) -> Packs[Plan]:
        return Packs()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


def _stamp(tensor: Tensor) -> tuple[int, int]:
    """Storage and version counter: they change when the tensor is replaced or written in place.
    Inference tensors (made under ``torch.inference_mode``) have no counter; ``.to()`` and
    ``load_state_dict`` outside inference mode still replace or version their storage."""
    return tensor.data_ptr(), -1 if tensor.is_inference() else tensor._version


def _tensors(module: nn.Module) -> Iterator[Tensor]:
    yield from module.parameters()
    yield from module.buffers()
