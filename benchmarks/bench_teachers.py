"""Teacher forward time at 256 x 256: VMamba-Tiny v0 vs Wide-ResNet-50-2 (layer1..layer4), batch 1 and 8.

    python benchmarks/bench_teachers.py [--device cuda] [--bf16] [--batches 1 8]

Both teachers are built by ``pdd.teachers.build`` with random weights (speed does not depend on
the values) and timed alternately, so their ratio comes from the same machine state.
"""

from __future__ import annotations

import torch
from _common import inference, machine, median_seconds, parser, setup, table

from pdd.teachers import build


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    device = setup(args)
    teachers = {name: build(name).to(device) for name in ("vmamba_tiny_v0", "wide_resnet50_2")}
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size, device=device)
        times = {}
        with inference(args):
            for name, teacher in teachers.items():
                times[name] = median_seconds(
                    lambda teacher=teacher, x=x: teacher(x), device, args.repeats
                )
        vm, wrn = times["vmamba_tiny_v0"], times["wide_resnet50_2"]
        rows.append(
            [
                batch,
                vm * 1e3,
                wrn * 1e3,
                f"{vm / wrn:.2f}",
                vm * 1e3 / batch,
                wrn * 1e3 / batch,
            ]
        )
    print(
        f"machine: {machine(device)}; input {args.size}x{args.size}; bf16 autocast: {args.bf16}\n"
    )
    print(
        table(
            [
                "batch",
                "VMamba-T ms",
                "WRN50 ms",
                "VMamba / WRN",
                "VMamba ms/img",
                "WRN ms/img",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
