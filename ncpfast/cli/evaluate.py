"""python -m ncpfast.evaluate RUN_DIR: the base prior and the NCP prior side by side.

NLL: the importance-weighted bound with K samples (nats, bits/dim), with log Z
and its standard error folded in for the NCP prior. Frechet distance of
generated vs held-out test images, on the features of a small classifier
trained on the data set's labels (named as such; it is not FID), and FID
proper when --fid-weights gives pytorch-fid's Inception weights file (it cannot
be downloaded here). Results go to RUN_DIR/metrics.json ("evaluation") and
print as a table. A run whose NCP has a GMM base (train --ncp-base gmm) gets a
GMM row too.

At a temperature T < 1 the NCP classifiers score latents (and decoder contexts)
they were not trained on; --readjust-bn re-estimates the decoder's BatchNorm
statistics at T before sampling (NVAE's re-adjustment, on a copy of the model;
the NLL keeps the checkpoint's statistics).
"""
import argparse
import json
import sys

from ..runtime import pick_device
from .common import USER_ERRORS, add_sampler_arguments, add_temperature_arguments, sampler_from_args


def build_parser():
    p = argparse.ArgumentParser(prog="python -m ncpfast.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with both stages (python -m ncpfast.train)")
    p.add_argument("--seed", type=int, default=0, metavar="SEED", help="seed of every random stream (default 0)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    nll = p.add_argument_group("NLL (importance weighted) and log Z")
    nll.add_argument("--iw-samples", type=int, default=100, metavar="K",
                     help="importance samples K of the NLL (default 100)")
    nll.add_argument("--max-images", type=int, default=0, metavar="N", help="test images of the NLL (0: all)")
    nll.add_argument("--iw-chunk", type=int, default=0, metavar="N",
                     help="importance samples per pass (0: all; bounds memory)")
    nll.add_argument("--log-z-samples", type=int, default=None, metavar="N",
                     help="estimate log Z anew from N draws (default: the run's own estimate from stage 2, "
                          "made with its --ncp-log-z-samples)")
    nll.add_argument("--log-z-proposal", choices=["prior", "aggregate-posterior"], default=None,
                     help="proposal of a new log Z estimate (default: stage 2's; aggregate-posterior: a defensive "
                          "mixture with training images' posteriors, single-group flat models)")
    sampling = p.add_argument_group("sampling the NCP prior")
    sampling.add_argument("--method", choices=["sir", "langevin"], default="sir",
                          help="how the NCP prior is sampled (default sir)")
    add_sampler_arguments(sampling, tunable_step_size=True)
    add_temperature_arguments(sampling)
    frechet = p.add_argument_group("Frechet distances")
    frechet.add_argument("--num-generated", type=int, default=1000, metavar="N",
                         help="images per prior for the Frechet distance (default 1000)")
    frechet.add_argument("--num-real", type=int, default=0, metavar="N",
                         help="test images of the Frechet distances' reference set (0: max(num-generated, 1000))")
    frechet.add_argument("--fid-weights", default="", metavar="FILE",
                         help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth: also compute FID with it")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .. import pipeline
    from ..evaluation import EvaluationSettings, format_table

    try:
        settings = EvaluationSettings(
            iw_samples=args.iw_samples, max_images=args.max_images, iw_chunk=args.iw_chunk,
            num_generated=args.num_generated, num_real=args.num_real, log_z_samples=args.log_z_samples,
            log_z_proposal=args.log_z_proposal, fid_weights=args.fid_weights, temperature=args.temperature,
            readjust_bn=args.readjust_bn, readjust_bn_batches=args.readjust_bn_batches, seed=args.seed,
            tune_step_size=args.step_size == "auto")
        sampler = sampler_from_args(args)
        evaluation = pipeline.evaluate(args.run_dir, pick_device(args.device), settings, sampler)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(evaluation.metrics, indent=2) if args.json else format_table(evaluation.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
