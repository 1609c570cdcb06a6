"""python -m ncpfast.sample RUN_DIR: images from a trained run's base or NCP prior.

    python -m ncpfast.sample runs/tiny-... --method sir -n 64 --num-proposals 50
    python -m ncpfast.sample runs/tiny-... --method langevin --steps 100 --step-size 0.01
    python -m ncpfast.sample runs/tiny-... --method base --temperature 0.8 --npz samples.npz
    python -m ncpfast.sample runs/tiny-... --temperature 0.7 --readjust-bn

At a temperature T < 1 the NCP classifiers score latents (and decoder contexts)
they were not trained on. --readjust-bn re-estimates the decoder's BatchNorm
statistics on prior samples at T first (NVAE's re-adjustment, on a copy of the
model; ncpfast.models.temperature).
"""
import argparse
import sys
import time

import numpy as np

from ..config import add_config_flags
from ..config.options import SAMPLE
from ..run_dir import RunDir
from ..runtime import pick_device
from .common import USER_ERRORS, evaluation_from_args, report_user_error, run_value, sampler_from_args


def build_parser():
    p = argparse.ArgumentParser(prog="python -m ncpfast.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by python -m ncpfast.train")
    what = p.add_argument_group("what to sample")
    what.add_argument("--method", choices=["sir", "langevin", "base"], default="sir",
                      help="sir / langevin with the NCP prior, or the base prior (default: sir)")
    what.add_argument("-n", "--num-samples", type=int, default=64, metavar="N", help="images to generate (default 64)")
    add_config_flags(p, SAMPLE, {"run": what, "evaluation": what, "sampler": p.add_argument_group("the samplers")})
    output = p.add_argument_group("output")
    output.add_argument("--out", metavar="PNG", help="PNG grid to write (default RUN_DIR/samples_<method>.png)")
    output.add_argument("--npz", metavar="FILE", help="also write the images, uint8 [N, H, W, C], to this .npz")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .. import pipeline
    from ..images import save_grid

    try:
        tempering = evaluation_from_args(args)  # the temperature and BatchNorm re-adjustment, checked
        sampler = sampler_from_args(args)
        device = pick_device(run_value(args, "device", "auto"))
        start = time.perf_counter()
        images = pipeline.sample(args.run_dir, device, args.num_samples, sampler, tempering.temperature,
                                 tempering.readjust_bn, tempering.readjust_bn_batches, run_value(args, "seed", 0))
        seconds = time.perf_counter() - start
    except USER_ERRORS as error:
        return report_user_error(error)
    out = args.out or RunDir(args.run_dir).sampler_output(args.method)
    save_grid(images, out)
    if args.npz:
        array = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        np.savez_compressed(args.npz, images=array)
    readjusted = f", BatchNorm re-adjusted on {tempering.readjust_bn_batches} batches" if tempering.readjust_bn else ""
    print(f"{args.num_samples} images ({args.method}, {sampler.mode} mode, temperature {tempering.temperature}"
          f"{readjusted}) in {seconds:.2f} s -> {out}"
          + (f" and {args.npz}" if args.npz else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
