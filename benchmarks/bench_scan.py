"""Fast chunked selective scan vs the sequential loop at VMamba-T's four stage sizes (256 x 256 input).

    python benchmarks/bench_scan.py [--device cuda] [--bf16] [--stages 1 2 3 4] [--backward-stages 3 4]  (default: forward 1-4, backward 4)

Inputs follow VMamba's v0 initialisation (A = -(1..16), dt log-uniform in [1e-3, 0.1] plus a
random projection), batch 1, K = 4 directions, N = 16. Errors are max |ours - loop| in the output
and, for forward+backward, in the gradient of u (relative to its largest value).

On the CPU a second table times one whole SS2D scan per stage (four directions with the cross scan,
dt projection and merge, as VMamba runs it) along the PyTorch path and in the fused CPU kernel, with
the kernel's max abs error against the float64 PyTorch path; "vs loop" divides the first table's
loop time at that stage (same number of state updates) by the kernel's time.
"""

from __future__ import annotations

import math
import sys

import torch
from _common import autocast, machine, median_seconds, parser, setup, table

from pdd.teachers.cross_scan import (
    _cross_scan_gathered,
    cpu_kernel,
    cross_selective_scan,
)
from pdd.teachers.selective_scan import (
    fused_kernel_available,
    selective_scan,
    selective_scan_reference,
)

# (stage, tokens L, inner width D) for a 256 x 256 input: 64^2, 32^2, 16^2, 8^2 tokens.
STAGES = {1: (4096, 192), 2: (1024, 384), 3: (256, 768), 4: (64, 1536)}


def inputs(
    length: int, inner: int, device: torch.device, dtype: torch.dtype, grad: bool
) -> list[torch.Tensor]:
    k, n = 4, 16
    channels = k * inner
    dt_init = torch.exp(torch.rand(channels) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    tensors = [
        torch.randn(1, channels, length),  # u
        torch.randn(1, channels, length) * 0.5,  # delta (before bias and softplus)
        -torch.arange(1, n + 1, dtype=torch.float32).repeat(channels, 1),  # A
        torch.randn(1, k, n, length),  # B
        torch.randn(1, k, n, length),  # C
        torch.ones(channels),  # D
        dt_init + torch.log(-torch.expm1(-dt_init)),  # delta_bias = softplus^-1(dt)
    ]
    return [t.to(device=device, dtype=dtype).requires_grad_(grad) for t in tensors]


def cross_inputs(length: int, inner: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """One SS2D block's scan inputs (VMamba v0 init): u, dt_low, B, C, dt_weight, dt_bias, A, D."""
    k, n, rank = 4, 16, math.ceil(inner / 2 / 16)
    dt_init = torch.exp(torch.rand(k, inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    x_dbl = torch.randn(1, length, k, rank + 2 * n)
    dt_low, B, C = torch.split(x_dbl, [rank, n, n], dim=3)
    tensors = [
        torch.randn(1, length, inner),
        dt_low,
        B,
        C,
        (torch.rand(k, inner, rank) * 2 - 1) * rank**-0.5,
        dt_init + torch.log(-torch.expm1(-dt_init)),
        -torch.arange(1, n + 1, dtype=torch.float32).repeat(k, inner, 1),
        torch.ones(k, inner),
    ]
    return [t.to(dtype) for t in tensors]


def cross_scan_rows(stages: list[int], repeats: int, loop_ms: dict[int, float]) -> list[list]:
    """Per SS2D block on the CPU: gathered directions + chunked scan + merge vs the fused kernel."""
    kernel = cpu_kernel()
    rows = []
    for stage in stages:
        length, inner = STAGES[stage]
        side = math.isqrt(length)
        x = cross_inputs(length, inner, torch.float32)
        cpu = torch.device("cpu")
        with torch.no_grad():
            expected = _cross_scan_gathered(*(t.double() for t in x), side, side, False)
            pytorch_path = median_seconds(
                lambda x=x, side=side: _cross_scan_gathered(*x, side, side, False),
                cpu,
                repeats,
            )
            if kernel is None:
                fused, err = float("nan"), float("nan")
            else:
                out = cross_selective_scan(*x, side, side)
                err = (out.double() - expected).abs().max().item()
                fused = median_seconds(
                    lambda x=x, side=side: cross_selective_scan(*x, side, side),
                    cpu,
                    repeats,
                )
        loop = loop_ms.get(stage)
        rows.append(
            [
                stage,
                f"{length} x 4 x {inner} x 16",
                pytorch_path * 1e3,
                fused * 1e3,
                f"{pytorch_path / fused:.1f}x",
                "" if loop is None else f"{loop / (fused * 1e3):.0f}x",
                f"{err:.2e}",
            ]
        )
        print("done:", rows[-1], file=sys.stderr, flush=True)
    return rows


def run(fn, args: list[torch.Tensor], backward: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not backward:
        with torch.no_grad():
            return fn(*args), None
    for t in args:
        t.grad = None
    out = fn(*args)
    out.float().square().sum().backward()
    return out, args[0].grad


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4], choices=sorted(STAGES))
    p.add_argument(
        "--backward-stages",
        type=int,
        nargs="*",
        default=[4],
        choices=sorted(STAGES),
        help="stages also timed forward+backward (the loop's backward takes minutes on a CPU above stage 4)",
    )
    args = p.parse_args()
    device = setup(args)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    torch.manual_seed(0)
    rows = []
    loop_ms: dict[int, float] = {}
    for backward, stages in ((False, args.stages), (True, args.backward_stages)):
        for stage in stages:
            length, inner = STAGES[stage]
            x = inputs(length, inner, device, dtype, backward)
            with autocast(args):
                ref_out, ref_grad = run(selective_scan_reference, x, backward)
                ours_out, ours_grad = run(selective_scan, x, backward)
                # The calls above were the warm-up.
                t_ref = median_seconds(
                    lambda x=x, backward=backward: run(selective_scan_reference, x, backward),
                    device,
                    args.repeats,
                    0,
                )
                t_ours = median_seconds(
                    lambda x=x, backward=backward: run(selective_scan, x, backward),
                    device,
                    args.repeats,
                    0,
                )
            if not backward:
                loop_ms[stage] = t_ref * 1e3
            err = (ours_out.float() - ref_out.float()).abs().max().item()
            grad_err = (
                ""
                if ref_grad is None
                else f"{((ours_grad - ref_grad).abs().max() / ref_grad.abs().max()).item():.2e}"
            )
            rows.append(
                [
                    "fwd+bwd" if backward else "fwd",
                    stage,
                    f"{length} x {4 * inner} x 16",
                    t_ref * 1e3,
                    t_ours * 1e3,
                    f"{t_ref / t_ours:.1f}x",
                    f"{err:.2e}",
                    grad_err,
                ]
            )
            print("done:", rows[-1], file=sys.stderr, flush=True)
    print(
        f"machine: {machine(device)}; dtype {str(dtype).replace('torch.', '')}; "
        f"fused CUDA kernel used: {device.type == 'cuda' and fused_kernel_available()}\n"
    )
    print(
        table(
            [
                "pass",
                "stage",
                "L x channels x N",
                "loop ms",
                "ours ms",
                "speed-up",
                "max abs err",
                "grad rel err",
            ],
            rows,
        )
    )
    if device.type == "cpu" and not args.bf16:
        print(
            "\nSS2D cross scan per block (4 directions incl. cross scan, dt projection and merge), "
            f"fused CPU kernel built: {cpu_kernel() is not None}"
            f"{'' if cpu_kernel() is None else ', vector path ' + cpu_kernel().vector_isa()}\n"
        )
        print(
            table(
                [
                    "stage",
                    "L x K x D x N",
                    "PyTorch path ms",
                    "fused kernel ms",
                    "speed-up",
                    "vs loop",
                    "max abs err vs fp64",
                ],
                cross_scan_rows(args.stages, args.repeats, loop_ms),
            )
        )


if __name__ == "__main__":
    main()
