"""Whole hierarchical SIR sampler: GroupedNCP.sample(method="sir") with the
context-shared scoring (kernels="auto") vs the reference that repeats each
image's context M times (kernels="torch"). Prints a table and writes JSON.

    python bench/grouped_sir_sampler.py --images 100 --proposals 5 50 500 --json bench/results/grouped-sir-<machine>.json
"""
import argparse
import json
import platform
import time

import torch

from ncpfast.models import build_model
from ncpfast.ncp import GroupedNCP
from ncpfast.training.config import PRESETS, TrainConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--proposals", type=int, nargs="+", default=[5, 50, 500])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = build_model(TrainConfig(**PRESETS[args.preset])).to(args.device).eval()
    ncp = GroupedNCP(vae).to(args.device).eval()
    rows = []
    for M in args.proposals:
        for kernels in ("auto", "torch"):
            ncp.kernels = kernels
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            with torch.no_grad():
                images = ncp.sample(args.images, method="sir", num_proposals=M,
                                    generator=torch.Generator(args.device).manual_seed(0))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
            rows.append(dict(M=M, kernels=kernels, seconds=seconds, peak_bytes=peak, images=args.images,
                             checksum=float(images.double().sum())))
            print(f"M={M:4d} kernels={kernels:5s} {seconds:8.3f} s  peak={peak}")
    for M in args.proposals:
        fused, ref = (next(r for r in rows if r["M"] == M and r["kernels"] == k) for k in ("auto", "torch"))
        print(f"M={M}: torch/shared time ratio {ref['seconds'] / fused['seconds']:.2f}x, "
              f"same images: {abs(fused['checksum'] - ref['checksum']) < 1e-3 * max(1, abs(ref['checksum']))}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(), "device": args.device,
                       "preset": args.preset, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
