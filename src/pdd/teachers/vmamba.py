"""VMamba "vanilla" (v0) backbone in plain PyTorch: the Mamba teacher T_m of PDD.

Parameter names follow the official VMamba ``VSSM`` backbone exactly (``patch_embed.0/2``,
``layers.i.blocks.j.norm``/``.op.*``, ``layers.i.downsample.1/2``), so the official checkpoint
minus its classifier loads with ``strict=True`` after :func:`convert_official_state_dict`.
The forward returns each stage's output *after* its downsample, as PDD uses it. The layout of
every step (cross scan, merge, patch merge) is documented in the golden-fixture README
(``shared/fixtures/vmamba_v0/README.md``), which the tests check against to 1e-10 in float64.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdd import conv_backend
from pdd.errors import ConfigError
from pdd.packed_convs import FoldedConv, Packs, usable
from pdd.teachers.cross_scan import cross_selective_scan

__all__ = ["TINY_CONFIG", "VMambaBackbone", "convert_official_state_dict"]

# Constructor arguments of VMamba-Tiny v0 ("vanilla_vmamba_tiny", vssmtiny_dp01_ckpt_epoch_292.pth).
TINY_CONFIG: dict[str, Any] = {
    "depths": [2, 2, 9, 2],
    "dims": 96,
    "patch_size": 4,
    "in_chans": 3,
    "ssm_d_state": 16,
    "ssm_ratio": 2.0,
    "ssm_dt_rank": "auto",
    "ssm_act_layer": "silu",
    "ssm_conv": 3,
    "ssm_conv_bias": True,
    "ssm_init": "v0",
    "forward_type": "v0",
    "mlp_ratio": 0.0,
    "patch_norm": True,
    "norm_layer": "ln",
    "downsample_version": "v1",
    "patchembed_version": "v1",
}

# Official keys that only matter for training the classifier or for other variants; accepted and
# ignored. Stochastic depth and checkpointing do not change an eval-mode teacher's output.
_INERT_KEYS = frozenset(
    {
        "drop_path_rate",
        "num_classes",
        "use_checkpoint",
        "imgsize",
        "mlp_act_layer",
        "mlp_drop_rate",
    }
)
# Keys with the only value we implement (anything else changes the math or the parameter set).
_FIXED_KEYS: dict[str, tuple[Any, ...]] = {
    "forward_type": ("v0",),
    "mlp_ratio": (0, 0.0),
    "gmlp": (False,),
    "ssm_act_layer": ("silu",),
    "ssm_drop_rate": (0, 0.0),
    "ssm_init": ("v0",),
    "norm_layer": ("ln", "LN"),
    "downsample_version": ("v1",),
    "patchembed_version": ("v1",),
    "posembed": (False,),
}
_LEGACY_RENAMES = (
    # (official old fragment, current fragment), applied to dotted key components.
    ("patch_embed.proj.", "patch_embed.0."),
    ("patch_embed.norm.", "patch_embed.2."),
    (".ln_1.", ".norm."),
    (".self_attention.", ".op."),
    (".downsample.norm.", ".downsample.1."),
    (".downsample.reduction.", ".downsample.2."),
)
_CLASSIFIER_PREFIXES = ("classifier.", "head.", "norm.")


class _ChannelsLast(nn.Module):
    """BCHW -> BHWC, the layout VMamba keeps between blocks (index 1 of ``patch_embed``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


class _Linear(nn.Linear):
    """``nn.Linear`` without bias (same parameter names), run through ``pdd.conv_backend.linear``:
    oneDNN on the CPU over many rows, where it is faster than the default GEMM."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return conv_backend.linear(x, self.weight)


class _PatchMerge(nn.Module):
    """2x2 space-to-channel on BHWC in VMamba's order: (even,even), (odd,even), (even,odd), (odd,odd)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
            dim=-1,
        )


class SS2D(nn.Module):
    """2D selective scan (v0): depthwise conv, four-direction cross scan, S6 scan, cross merge, gate."""

    def __init__(
        self,
        dim: int,
        d_state: int,
        ratio: float,
        dt_rank: int | str,
        conv: int,
        conv_bias: bool,
    ):
        super().__init__()
        inner = int(ratio * dim)
        rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.inner, self.rank, self.d_state, self.directions = inner, rank, d_state, 4
        k = self.directions
        # Registration order = official state-dict order.
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * d_state, inner))
        self.A_logs = nn.Parameter(torch.empty(k * inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, inner, rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, inner))
        self.in_proj = _Linear(dim, 2 * inner)
        self.conv2d = (
            nn.Conv2d(
                inner,
                inner,
                conv,
                padding=(conv - 1) // 2,
                groups=inner,
                bias=conv_bias,
            )
            if conv > 1
            else None
        )
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = _Linear(inner, dim)
        self._init_ssm()
        self._packs: Packs[FoldedConv] = Packs()

    @torch.no_grad()
    def _init_ssm(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """VMamba's v0 init (random teachers): S4D-real A, dt log-uniform in [dt_min, dt_max]."""
        nn.init.uniform_(self.x_proj_weight, -(self.inner**-0.5), self.inner**-0.5)
        nn.init.uniform_(self.dt_projs_weight, -(self.rank**-0.5), self.rank**-0.5)
        dt = torch.exp(
            torch.rand(self.dt_projs_bias.shape) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        )
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_logs.copy_(
            torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs)
        )
        self.Ds.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, _ = x.shape
        k, inner = self.directions, self.inner
        # in_proj's two halves as two projections: each output is dense, so the depthwise conv
        # reads x without first copying it out of a strided half (bit-identical).
        z = conv_backend.linear(x, self.in_proj.weight[inner:])
        x = conv_backend.linear(x, self.in_proj.weight[:inner])
        # Tokens in row-major order, channels last: (B, L, D). The four scan directions are
        # orders of visiting these positions (pdd.teachers.cross_scan), never separate copies.
        u = self._conv_silu(x).reshape(batch, height * width, inner)
        # x_proj of all four directions as one GEMM (an einsum here becomes a slower bmm).
        x_dbl = conv_backend.linear(u, self.x_proj_weight.reshape(-1, inner))
        x_dbl = x_dbl.view(batch, height * width, k, -1)
        dt_low, Bs, Cs = torch.split(x_dbl, [self.rank, self.d_state, self.d_state], dim=3)
        scan_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = cross_selective_scan(
            u,
            dt_low,
            Bs,
            Cs,
            self.dt_projs_weight,
            self.dt_projs_bias,
            -torch.exp(self.A_logs.to(scan_dtype)).view(k, inner, self.d_state),
            self.Ds.view(k, inner),
            height,
            width,
        )
        y = self.out_norm(y).view(batch, height, width, inner)
        # The gate in place: two fewer buffers of the block's widest tensor (bit-identical);
        # autograd keeps what its backward needs by itself. Together with the changes above and
        # the residual below: benchmarks/README.md, "VMamba's elementwise passes".
        return self.out_proj(y.mul_(F.silu(z, inplace=True)))

    def _conv_silu(self, x: Tensor) -> Tensor:
        """``silu(conv2d(x))`` on BHWC; at CPU inference one prepacked oneDNN call (``swish``)."""
        if self.conv2d is None:
            return F.silu(x)
        image = x.permute(0, 3, 1, 2)
        if usable(image, self.conv2d):
            conv = self._packs.plan(
                self.conv2d, image, lambda size: FoldedConv(self.conv2d, None, size)
            )
            return conv(image, "swish").permute(0, 2, 3, 1)
        return F.silu(self.conv2d(image).permute(0, 2, 3, 1))


class VSSBlock(nn.Module):
    """Pre-norm residual block ``x + op(norm(x))`` (v0 has no MLP branch)."""

    def __init__(self, dim: int, **ssm: Any):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, **ssm)

    def forward(self, x: Tensor) -> Tensor:
        # Added into op's fresh output: one buffer fewer per block (bit-identical).
        return self.op(self.norm(x)).add_(x)


def _downsample(dim: int) -> nn.Sequential:
    """Patch merging v1: 2x2 space-to-channel, LayerNorm(4C), Linear 4C -> 2C without bias."""
    return nn.Sequential(
        _PatchMerge(), nn.LayerNorm(4 * dim), _Linear(4 * dim, 2 * dim)
    )


def _stage_dims(dims: int | Sequence[int], stages: int) -> list[int]:
    if isinstance(dims, int):
        return [dims * 2**i for i in range(stages)]
    dims = [int(d) for d in dims]
    if len(dims) != stages:
        raise ConfigError(f"vmamba: dims has {len(dims)} entries but depths has {stages}")
    return dims


class VMambaBackbone(nn.Module):
    """VMamba v0 feature extractor; accepts the official ``VSSM`` constructor keys.

    ``forward(x)`` returns one BCHW feature per stage, taken after the stage's downsample
    (strides 8, 16, 32, 32 for the Tiny layout).
    """

    def __init__(self, **config: Any):
        super().__init__()
        unknown = set(config) - set(TINY_CONFIG) - _INERT_KEYS - set(_FIXED_KEYS)
        if unknown:
            raise ConfigError(f"vmamba: unknown config key(s) {sorted(unknown)}")
        for key, allowed in _FIXED_KEYS.items():
            if key in config and config[key] not in allowed:
                raise ConfigError(
                    f"vmamba: {key}={config[key]!r} is not supported (only {allowed[0]!r})"
                )
        cfg = {**TINY_CONFIG, **config}
        depths = [int(d) for d in cfg["depths"]]
        if not depths or min(depths) < 0:
            raise ConfigError(
                f"vmamba: depths must be a non-empty list of counts, got {cfg['depths']!r}"
            )
        dims = _stage_dims(cfg["dims"], len(depths))
        conv = int(cfg["ssm_conv"])
        if conv < 1 or conv % 2 == 0:
            raise ConfigError(f"vmamba: ssm_conv must be an odd kernel size >= 1, got {conv}")
        dt_rank = cfg["ssm_dt_rank"]
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or dt_rank < 1):
            raise ConfigError(
                f"vmamba: ssm_dt_rank must be 'auto' or a positive int, got {dt_rank!r}"
            )
        if float(cfg["ssm_ratio"]) <= 0 or int(cfg["ssm_d_state"]) < 1:
            raise ConfigError("vmamba: ssm_ratio and ssm_d_state must be positive")
        for i in range(len(dims) - 1):
            if dims[i + 1] != 2 * dims[i]:
                raise ConfigError(
                    f"vmamba: patch merging doubles the width, so dims must double, got {dims}"
                )
        self.patch_size = int(cfg["patch_size"])
        self.channels = tuple(dims[1:] + dims[-1:])
        self.strides = tuple(
            self.patch_size * 2 ** min(i + 1, len(dims) - 1) for i in range(len(dims))
        )
        self._multiple = self.patch_size * 2 ** (len(dims) - 1)
        self.patch_embed = nn.Sequential(
            nn.Conv2d(int(cfg["in_chans"]), dims[0], self.patch_size, stride=self.patch_size),
            _ChannelsLast(),
            nn.LayerNorm(dims[0]) if cfg["patch_norm"] else nn.Identity(),
        )
        ssm = {
            "d_state": int(cfg["ssm_d_state"]),
            "ratio": float(cfg["ssm_ratio"]),
            "dt_rank": dt_rank,
            "conv": conv,
            "conv_bias": bool(cfg["ssm_conv_bias"]),
        }
        self.layers = nn.ModuleList(
            nn.Sequential(
                OrderedDict(
                    blocks=nn.Sequential(*(VSSBlock(dim, **ssm) for _ in range(depth))),
                    downsample=_downsample(dim) if i < len(dims) - 1 else nn.Identity(),
                )
            )
            for i, (dim, depth) in enumerate(zip(dims, depths))
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4 or x.shape[-2] % self._multiple or x.shape[-1] % self._multiple:
            raise ConfigError(
                f"vmamba: input must be (B, C, H, W) with H and W multiples of {self._multiple}, "
                f"got {tuple(x.shape)}"
            )
        x = self.patch_embed(x)
        features = []
        for stage in self.layers:
            x = stage(x)
            features.append(x.permute(0, 3, 1, 2).contiguous())
        return features


def convert_official_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official VMamba v0 checkpoint -> backbone state dict.

    Unwraps ``"model"``, renames legacy keys and drops the classifier.

    Backbone keys are never dropped or invented; ``load_state_dict(strict=True)`` judges the result.
    """
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(_CLASSIFIER_PREFIXES):
            continue
        for old, new in _LEGACY_RENAMES:
            if old in key:
                key = key.replace(old, new)
        converted[key] = value
    return converted
