"""FactorizedReduce (the encoder's stride-2 skip), forward+backward on a
channels-last input as inside the fused encoder, timed in interleaved rounds:

    strided-conv  four stride-2 1x1 convolutions on the shifted inputs: the
                  form that walks into oneDNN issue 6035 on AVX2 kernels
                  (see ncpfast/nn/cells.py), kept here only as the baseline
    sliced        the stride taken by slicing, then stride-1 convolutions
                  (FactorizedReduce.forward)

    python bench/factorized_reduce_ab.py [--rounds 15] [--out FILE.json]
Run it once by default and once with ONEDNN_MAX_CPU_ISA=AVX2 (and/or
OMP_NUM_THREADS=1) to see both kernel families; the ratio is sliced/strided.
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F

from measure import cpu_name, interleaved_seconds, summarize
from ncpfast.nn.cells import FactorizedReduce

# (batch, in channels, height, width, out channels): the tiny, mnist and
# celeba64 presets' first down steps, and a deeper mnist one.
SHAPES = [(32, 16, 32, 32, 32), (32, 32, 32, 32, 64), (32, 64, 16, 16, 128), (16, 64, 64, 64, 128)]


def strided_conv(reduce, x):
    x = F.silu(x)
    shifted = (x, x[:, :, 1:, 1:], x[:, :, :, 1:], x[:, :, 1:, :])
    return torch.cat([F.conv2d(s, c.normalized_weight(), c.bias, stride=2) for c, s in zip(reduce.convs, shifted)],
                     dim=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    results = {}
    for n, c, h, w, o in SHAPES:
        torch.manual_seed(0)
        reduce = FactorizedReduce(c, o)
        x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        torch.testing.assert_close(reduce(x), strided_conv(reduce, x), rtol=1e-4, atol=1e-5)
        variants = {"strided-conv": lambda reduce=reduce, x=x: strided_conv(reduce, x).square().sum().backward(),
                    "sliced": lambda reduce=reduce, x=x: reduce(x).square().sum().backward()}
        seconds = interleaved_seconds(variants, "cpu", args.rounds)
        row = {name: summarize(s) for name, s in seconds.items()}
        row["sliced_over_strided_median"] = row["sliced"]["median_ms"] / row["strided-conv"]["median_ms"]
        key = f"N={n} C={c} {h}x{w} -> {o}"
        results[key] = row
        print(f"{key}: strided {row['strided-conv']['median_ms']:.2f} ms, sliced {row['sliced']['median_ms']:.2f} ms,"
              f" ratio {row['sliced_over_strided_median']:.2f}", flush=True)
    report = {"machine": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
              "rounds": args.rounds, "results": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
