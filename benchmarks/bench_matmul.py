"""Float32 (or bf16) matmul throughput of this machine, so other timings can be read as a fraction of the limit.

python benchmarks/bench_matmul.py [--device cuda] [--bf16]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from _common import machine, median_seconds, parser, setup, table


def square_matmul(
    n: int, device: torch.device, dtype: torch.dtype
) -> tuple[Callable[[], object], int]:
    """A call multiplying two random n x n matrices, and its FLOP count (2 n^3): one GEMM sample."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: a @ b), 2 * n**3


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    args = p.parse_args()
    device = setup(args)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    rows = []
    for n in args.sizes:
        matmul, flops = square_matmul(n, device, dtype)
        seconds = median_seconds(matmul, device, max(args.repeats, 5))
        rows.append(
            [
                f"{n}x{n} @ {n}x{n}",
                str(dtype).replace("torch.", ""),
                seconds * 1e3,
                flops / seconds / 1e9,
            ]
        )
    print(f"machine: {machine(device)}\n")
    print(table(["matmul", "dtype", "median ms", "GFLOP/s"], rows))


if __name__ == "__main__":
    main()
