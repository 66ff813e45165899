"""Where a teacher's forward spends its time: torch.profiler's table of operators by self CPU time.

    python benchmarks/profile_teacher.py [--teacher vmamba_tiny_v0|wide_resnet50_2] [--batch 1] [--rows 15]

Random weights, 256 x 256 input, one warm-up forward, then one profiled forward under no_grad.
The fused CPU scan kernel shows up as ``pdd::cross_scan_cpu_kernel``.
"""

from __future__ import annotations

import torch
from _common import machine, parser, setup
from torch.profiler import ProfilerActivity, profile

from pdd import teachers


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--teacher", default="vmamba_tiny_v0", choices=teachers.available())
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args()
    device = setup(args)
    model = teachers.build(args.teacher).to(device)
    x = torch.randn(args.batch, 3, 256, 256, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad():
        model(x)
        with profile(activities=activities) as prof:
            model(x)
    print(f"machine: {machine(device)}; {args.teacher}, batch {args.batch}, 256x256\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
