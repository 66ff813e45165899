"""Selective scan (the S6 recurrence of Mamba/VMamba): a sequential reference and a fast chunked scan.

Shapes (``b`` batch, ``c`` channels, ``g`` groups sharing B and C, ``n`` state size, ``L`` length)::

    u, delta: (b, c, L)   A: (c, n)   B, C: (b, g, n, L)   D, delta_bias: (c,)

with channel ``i`` in group ``i // (c // g)``. The math, per channel and state::

    dt_l  = softplus(delta_l + delta_bias)            (when delta_softplus)
    h_l   = exp(dt_l * A) * h_{l-1} + dt_l * B_l * u_l        (h_0 = 0)
    y_l   = sum_n C_l * h_l + D * u_l

Both functions compute in float64 for float64 inputs and in float32 otherwise (bf16/fp16 inputs are
widened, as VMamba does), and return the output in that compute dtype.

The fast scan cuts L into chunks of ``chunk`` steps. Inside a chunk the recurrence has the closed
form ``h_l = w_l * (cumsum_j(x_j / w_j) + e * s)``, with ``w_l`` the decay between the chunk's middle
step and step l, ``e`` the decay from the chunk start to its middle and ``s`` the state carried in.
So a chunk is a handful of vectorised tensor ops, and the chunk-start states come from a log-depth
doubling scan over the chunks. ``w`` and ``1 / w`` reach ``exp(|A| * sum(dt))`` over half a chunk;
wherever that exceeds a safe bound for the dtype, those (channel, chunk, state) rows are computed by
the plain recurrence instead, so nothing overflows whatever the decay (forward and backward). Work
is done in blocks of channels, which bounds peak memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "fused_kernel_available",
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_traceable",
]

# Largest |log decay| spanned inside one chunk for which exp(+span) * |x| stays finite with margin.
_SAFE_SPAN = {torch.float32: 60.0, torch.float64: 600.0}
# Elements of the (block, L, n) working tensors per channel block (8 MiB in float32). Measured at
# VMamba-T stage 1 on 2 cores: smaller blocks pay more in per-op overhead than they gain in cache.
_BLOCK_ELEMENTS = 1 << 21


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[int, int]:
    """Validate the documented layout; return (groups, channels per group)."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            "selective scan: u and delta must both be (b, c, L), "
            f"got {tuple(u.shape)} and {tuple(delta.shape)}"
        )
    batch, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"selective scan: A must be ({channels}, n), got {tuple(A.shape)}")
    state = A.shape[1]
    if (
        B.dim() != 4
        or B.shape != C.shape
        or B.shape[0] != batch
        or B.shape[2] != state
        or B.shape[3] != length
    ):
        raise ValueError(
            f"selective scan: B and C must be ({batch}, g, {state}, {length}), "
            f"got {tuple(B.shape)} and {tuple(C.shape)}"
        )
    groups = B.shape[1]
    if channels % groups:
        raise ValueError(f"selective scan: {channels} channels do not split into {groups} groups")
    return groups, channels // groups


def _prepare_dt(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    return F.softplus(delta) if delta_softplus else delta


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
) -> Tensor:
    """The recurrence as a plain loop over L: the ground truth the fast scan is tested against."""
    _, per_group = _check_shapes(u, delta, A, B, C)
    dtype = _compute_dtype(u)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    dt = _prepare_dt(delta, None if delta_bias is None else delta_bias.to(dtype), delta_softplus)
    B = B.repeat_interleave(per_group, dim=1)  # (b, c, n, L)
    C = C.repeat_interleave(per_group, dim=1)
    decay = torch.exp(dt[:, :, None, :] * A[None, :, :, None])  # (b, c, n, L)
    drive = (dt * u)[:, :, None, :] * B
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    outputs = []
    for step in range(u.shape[2]):
        h = decay[..., step] * h + drive[..., step]
        outputs.append((h * C[..., step]).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + u * D.to(dtype)[:, None]
    return y


def fused_kernel_available() -> bool:
    """True when mamba_ssm's CUDA selective-scan kernel can be imported (optional extra)."""
    return _fused_scan_fn() is not None


def _fused_scan_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (
        ImportError,
        OSError,
        RuntimeError,
    ):  # absent, or built for another torch/CUDA
        return None
    return selective_scan_fn


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    *,
    chunk: int = 48,
) -> Tensor:
    """Fast selective scan; same arguments and result as :func:`selective_scan_reference`.

    On CUDA, with mamba_ssm installed and no float64 inputs, the fused kernel is used instead.
    Differentiable through autograd in both paths.
    """
    groups, per_group = _check_shapes(u, delta, A, B, C)
    if chunk < 1:
        raise ValueError(f"selective scan: chunk must be >= 1, got {chunk}")
    dtype = _compute_dtype(u)
    if u.is_cuda and dtype == torch.float32:
        fused = _fused_scan_fn()
        if fused is not None:
            with torch.autocast(device_type="cuda", enabled=False):
                args = [t.float().contiguous() for t in (u, delta, A, B, C)]
                out = fused(
                    *args,
                    None if D is None else D.float(),
                    z=None,
                    delta_bias=None if delta_bias is None else delta_bias.float(),
                    delta_softplus=delta_softplus,
                )
            return out
    with torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
        dt = _prepare_dt(
            delta, None if delta_bias is None else delta_bias.to(dtype), delta_softplus
        )
        batch, channels, length = u.shape
        state = A.shape[1]
        block = max(1, min(per_group, _BLOCK_ELEMENTS // max(1, length * state)))
        outputs = []
        for b in range(batch):
            for g in range(groups):
                Bg = B[b, g].transpose(0, 1)  # (L, n)
                Cg = C[b, g].transpose(0, 1)
                for start in range(g * per_group, (g + 1) * per_group, block):
                    stop = min(start + block, (g + 1) * per_group)
                    outputs.append(
                        _scan_block(
                            u[b, start:stop],
                            dt[b, start:stop],
                            A[start:stop],
                            Bg,
                            Cg,
                            chunk,
                        )
                    )
        y = torch.cat(outputs, dim=0).view(batch, channels, length)
        if D is not None:
            y = y + u * D.to(dtype)[:, None]
    return y


def _scan_block(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int) -> Tensor:
    """Scan one block of channels sharing B and C: u, dt (c, L); A (c, n); B, C (L, n) -> (c, L)."""
    channels, length = u.shape
    state = A.shape[1]
    chunk = min(chunk, length)
    chunks = -(-length // chunk)
    pad = chunks * chunk - length
    if pad:
        # dt = 0 and u = 0 leave the state unchanged; padded outputs are cut off below.
        u, dt = F.pad(u, (0, pad)), F.pad(dt, (0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    dt = dt.reshape(channels, chunks, chunk)
    B, C = B.reshape(chunks, chunk, state), C.reshape(chunks, chunk, state)
    # Drive of each step, dt * u * B: (c, k, T, n).
    x = (dt * u.reshape(channels, chunks, chunk))[..., None] * B
    A4 = A[:, None, None, :]
    cum = dt.cumsum(-1)
    mid = chunk // 2
    # Log decay between the chunk's middle step and step l (>= 0 before it, <= 0 after it). Measuring
    # from the middle halves the largest exponent, so longer chunks stay inside the safe range.
    rel = (cum - cum[..., mid : mid + 1])[..., None] * A4
    reach = torch.maximum(cum[..., mid] - cum[..., 0], cum[..., -1] - cum[..., mid])
    unsafe = reach[..., None] * A.abs()[:, None, :] > _SAFE_SPAN[u.dtype]  # (c, k, n)
    exact = None
    if bool(unsafe.any()):
        # Step-by-step recurrence there; the closed form is kept finite there, and unused.
        index = unsafe.nonzero(as_tuple=True)
        exact = _recurrence(
            dt[index[0], index[1]] * A[index[0], index[2]][:, None],
            x.transpose(2, 3)[index],
        )
        rel = rel.masked_fill(unsafe[:, :, None, :], 0.0)
    # Without autograd, work in place: fresh multi-MiB tensors cost more in page faults than the math.
    inplace = not (torch.is_grad_enabled() and (x.requires_grad or rel.requires_grad))
    # partial_l = h_l / w_l for a chunk that starts from zero. With autograd, x * exp(-rel)
    # rather than x / w: the backward of a division squares w, which can overflow.
    if inplace:
        w = rel.exp_()
        partial = x.div_(w).cumsum(2)
    else:
        w = rel.exp()
        partial = (x * torch.exp(-rel)).cumsum(2)
    # Decay from the chunk start to its middle.
    to_mid = (cum[..., mid : mid + 1, None] * A4).exp()
    local_end = w[:, :, -1] * partial[:, :, -1]
    chunk_decay = w[:, :, -1] * to_mid[:, :, 0]
    if exact is not None:
        local_end = local_end.index_put(index, exact[0][:, -1])
        chunk_decay = chunk_decay.index_put(index, exact[1][:, -1])
    start = _carry(local_end, chunk_decay)[:, :, None, :]  # (c, k, 1, n)
    if inplace:
        h = partial.add_(to_mid * start).mul_(w)
    else:
        h = (partial + to_mid * start) * w
    if exact is not None:
        exact_h = torch.addcmul(exact[0], exact[1], start[:, :, 0][index][:, None])
        h = h.transpose(2, 3).index_put(index, exact_h).transpose(2, 3)
    y = torch.einsum("cktn,ktn->ckt", h, C)
    return y.reshape(channels, chunks * chunk)[:, :length]


def _carry(end_local: Tensor, chunk_decay: Tensor) -> Tensor:
    """Start state of every chunk (dim 1): s_0 = 0, s_{k+1} = decay_k * s_k + end_local_k.

    Log-depth doubling scan (Hillis-Steele): about 3 log2(chunks) small ops instead of a Python loop
    over the chunks; it only multiplies decays <= 1 and adds, so it cannot overflow.
    """
    state, decay = end_local, chunk_decay
    offset = 1
    while offset < state.shape[1]:
        state = torch.cat(
            [
                state[:, :offset],
                torch.addcmul(state[:, offset:], decay[:, offset:], state[:, :-offset]),
            ],
            1,
        )
        decay = torch.cat([decay[:, :offset], decay[:, offset:] * decay[:, :-offset]], 1)
        offset *= 2
    return torch.cat([torch.zeros_like(state[:, :1]), state[:, :-1]], 1)


def _recurrence(log_decay: Tensor, drive: Tensor) -> tuple[Tensor, Tensor]:
    """Step-by-step states from zero, and cumulative decays, of independent rows: (m, T) each."""
    step_decay = log_decay.exp()
    h = torch.zeros_like(step_decay[:, 0])
    p = torch.ones_like(h)
    states, decays = [], []
    for t in range(step_decay.shape[1]):
        h = torch.addcmul(drive[:, t], step_decay[:, t], h)
        p = p * step_decay[:, t]
        states.append(h)
        decays.append(p)
    return torch.stack(states, 1), torch.stack(decays, 1)


def selective_scan_traceable(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """The selective scan with shape-only control flow, so ``torch.export`` can trace it.

    :func:`selective_scan` branches on the data (it switches to a step loop where its closed form
    could overflow) and loops over the batch; neither can become a static graph. The VMamba
    teacher uses this one while it is being exported (ONNX), and the fast one otherwise.
    Here ``h_l = decay_l * h_{l-1} + drive_l`` is solved by a log-depth (Hillis-Steele) scan over
    the whole sequence: ceil(log2 L) rounds that only multiply decays <= 1 and add, so nothing
    can overflow whatever the data, and the batch axis stays symbolic.
    Same arguments and result as :func:`selective_scan_reference`.
    """
    dtype = _compute_dtype(u)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    dt = _prepare_dt(delta, None if delta_bias is None else delta_bias.to(dtype), delta_softplus)
    per_group = u.shape[1] // B.shape[1]
    B = B.repeat_interleave(per_group, dim=1)  # (b, c, n, L)
    C = C.repeat_interleave(per_group, dim=1)
    decay = torch.exp(dt[:, :, None, :] * A[None, :, :, None])
    state = (dt * u)[:, :, None, :] * B
    length = u.shape[2]
    offset = 1
    while offset < length:
        shifted = torch.addcmul(state[..., offset:], decay[..., offset:], state[..., :-offset])
        state = torch.cat([state[..., :offset], shifted], dim=-1)
        decay = torch.cat([decay[..., :offset], decay[..., offset:] * decay[..., :-offset]], dim=-1)
        offset *= 2
    y = (state * C).sum(2)
    if D is not None:
        y = y + u * D.to(dtype)[:, None]
    return y
