"""A residual cell, forward+backward in training, timed in interleaved blocks.

On a shared machine whose speed drifts over minutes, pytest-benchmark's
one-variant-after-another medians can differ by more than the effect being
measured. This script alternates blocks of rounds of every variant, several
times, so that drift hits all of them alike, and reports medians and minima.
Every cell gets eager, fused and compile; the encoder cell also the rest:

    eager          the eager cell on an NCHW input (what eager code gets)
    eager-nhwc-in  the eager cell on a channels-last input
    fused          the fused cell on an NCHW input (it converts once)
    fused-nhwc-in  the fused cell on a channels-last input (as inside HierarchicalVAE)
    compile        torch.compile of the eager cell, NCHW input
    convs-floor    only the cell's two weight-normalised 3x3 convs (channels-last)
                   and the residual add: what no fusion of the BN/Swish/SE work
                   can go below
    convs-nchw     the same on an NCHW input: the convs' share of the eager cell

    python bench/cell_ab.py [--cell encoder|generative] [--channels 32 96] [--blocks 6] [--rounds 12]
                            [--no-compile] [--out FILE.json]
"""
import argparse
import copy
import json

import torch

from measure import cpu_name, interleaved_seconds, summarize
from ncpfast.nn.cells import EncoderCell, GenerativeCell, set_cell_kernels

CELLS = {"encoder": EncoderCell, "generative": GenerativeCell}


def variants(kind, channels, batch=64, size=16, compile_eager=True):
    torch.manual_seed(0)
    cell = CELLS[kind](channels, channels).train()
    fused = set_cell_kernels(copy.deepcopy(cell), "fused")
    eager = set_cell_kernels(copy.deepcopy(cell), "torch")
    nchw = torch.randn(batch, channels, size, size)
    table = {"eager": (eager, nchw), "fused": (fused, nchw)}
    if kind == "encoder":
        nhwc = nchw.contiguous(memory_format=torch.channels_last)
        conv1, conv2 = fused.ops[2], fused.ops[5]

        def convs_floor(x):
            return conv2(conv1(x)) + x

        table.update({"eager-nhwc-in": (eager, nhwc), "fused-nhwc-in": (fused, nhwc),
                      "convs-floor": (convs_floor, nhwc), "convs-nchw": (convs_floor, nchw)})
    if compile_eager:
        table["compile"] = (torch.compile(set_cell_kernels(copy.deepcopy(cell), "torch"), dynamic=False), nchw)
    return {name: (fn, x.clone().requires_grad_()) for name, (fn, x) in table.items()}


def measure(table, blocks, rounds, warmup=3):
    grads = {}

    def step(name):
        fn, x = table[name]
        out = fn(x)
        grads.setdefault(name, torch.ones_like(out))
        out.backward(grads[name])

    steps = {name: (lambda name=name: step(name)) for name in table}
    times = interleaved_seconds(steps, "cpu", rounds=blocks, calls=rounds, warmup=warmup)
    return {name: summarize(t) for name, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", choices=sorted(CELLS), default="encoder")
    p.add_argument("--channels", type=int, nargs="+", default=[32, 96])
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    results = {}
    for channels in args.channels:
        stats = measure(variants(args.cell, channels, compile_eager=not args.no_compile), args.blocks, args.rounds)
        results[f"C={channels}"] = stats
        eager = stats["eager"]
        print(f"{args.cell} cell 64x{channels}x16x16, fwd+bwd, {args.blocks} blocks x {args.rounds} rounds")
        print("| variant | median (ms) | min (ms) | eager/variant (median) | (min) |")
        print("|---|---|---|---|---|")
        for name, s in stats.items():
            print(f"| {name} | {s['median_ms']:.2f} | {s['min_ms']:.2f} | "
                  f"{eager['median_ms'] / s['median_ms']:.2f}x | {eager['min_ms'] / s['min_ms']:.2f}x |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cell": args.cell, "machine": cpu_name(), "cores": torch.get_num_threads(),
                       "torch": torch.__version__,
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
