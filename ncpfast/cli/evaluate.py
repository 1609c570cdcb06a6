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

The flags are those of python -m ncpfast.train's evaluation and sampler
sections, by the same names.
"""
import argparse
import json
import sys

from ..config import add_config_flags, section_values
from ..config.options import EVALUATE
from ..evaluation import STEP_SIZE_CANDIDATES
from ..runtime import init_distributed, pick_device, shutdown_distributed
from .common import (
    AUTO,
    USER_ERRORS,
    evaluation_from_args,
    report_user_error,
    run_value,
    sampler_from_args,
    step_size_or_auto,
)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m ncpfast.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with both stages (python -m ncpfast.train)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    sampling = p.add_argument_group("sampling the NCP prior")
    sampling.add_argument("--method", choices=["sir", "langevin"], default="sir",
                          help="how the NCP prior is sampled (default sir)")
    auto = (f", or auto: the one of {', '.join(map(str, STEP_SIZE_CANDIDATES))} whose samples are closest (FD) to "
            "training images held out of stage 2, chosen before the evaluation")
    add_config_flags(p, EVALUATE, {"sampler": sampling}, types={"sampler.step_size": step_size_or_auto},
                     more_help={"sampler.step_size": auto})
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .. import pipeline
    from ..evaluation import format_table

    try:
        tune = section_values(args, "sampler").get("step_size") == AUTO
        settings = evaluation_from_args(args, tune_step_size=tune)
        progress = section_values(args, "logging").get("progress", True)
        sampler = sampler_from_args(args)
        device_request = run_value(args, "device", "auto")
        pick_device(device_request)  # a device that is not there: the clear error before any set-up
    except USER_ERRORS as error:
        return report_user_error(error)
    distributed = init_distributed(device_request)
    try:
        evaluation = pipeline.evaluate(args.run_dir, pick_device(device_request, distributed.local_rank), settings,
                                       sampler, run_value(args, "seed", 0), progress, distributed)
    except USER_ERRORS as error:
        return report_user_error(error)
    finally:
        shutdown_distributed()
    if evaluation is not None:  # rank 0's
        print(json.dumps(evaluation.metrics, indent=2) if args.json else format_table(evaluation.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
