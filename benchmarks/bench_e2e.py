"""End to end: PDD vs RD4AD inference per image, training step per batch, and peak memory.

    python benchmarks/bench_e2e.py [--device cuda] [--bf16] [--presets pdd rd4ad] [--batch 4]

Models come from ``pdd.create_model(preset, teachers="random", image_size=256)`` (random teachers:
speed does not depend on the weights). Each (preset, pass) is measured in a fresh worker process so
its peak memory is its own: on CPU the peak resident set size of the worker (which includes about
0.3-0.5 GB of Python and torch), on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from _common import autocast, machine, median_seconds, parser, setup, table


def worker(args: argparse.Namespace) -> dict:
    import pdd

    device = setup(args)
    model = pdd.create_model(args.worker_preset, teachers="random", image_size=args.size).to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if args.worker_pass == "inference":
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast(args):
                model(images)
    else:
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(args):
                loss = model.loss(images)["loss"]
            loss.backward()
            optimizer.step()

    seconds = median_seconds(step, device, args.repeats)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    return {"seconds": seconds, "peak_gib": peak, "machine": machine(device)}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["pdd", "rd4ad"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--worker-preset", help=argparse.SUPPRESS)
    p.add_argument("--worker-pass", choices=["inference", "train"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_preset:
        print(json.dumps(worker(args)))
        return
    rows, info = [], ""
    for preset in args.presets:
        for pass_name in ("inference", "train"):
            command = (
                [
                    sys.executable,
                    __file__,
                    "--worker-preset",
                    preset,
                    "--worker-pass",
                    pass_name,
                    "--device",
                    args.device,
                    "--repeats",
                    str(args.repeats),
                    "--batch",
                    str(args.batch),
                    "--size",
                    str(args.size),
                ]
                + (["--bf16"] if args.bf16 else [])
                + (["--threads", str(args.threads)] if args.threads else [])
            )
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(
                    f"error: {preset} {pass_name} worker failed: {done.stderr.strip().splitlines()[-1:]}"
                )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            info = result["machine"]
            per = "per image" if pass_name == "inference" else "per batch"
            value = (
                result["seconds"] / args.batch if pass_name == "inference" else result["seconds"]
            )
            rows.append(
                [
                    preset,
                    pass_name,
                    args.batch,
                    f"{value * 1e3:.0f} ms {per}",
                    f"{result['peak_gib']:.2f}",
                ]
            )
    print(f"machine: {info}; input {args.size}x{args.size}; bf16 autocast: {args.bf16}\n")
    print(table(["preset", "pass", "batch", "time", "peak memory GiB"], rows))


if __name__ == "__main__":
    main()
