"""python -m ncpfast.train: stage 1, the VAE (no arguments: the `tiny` preset on
the embedded MNIST).

    python -m ncpfast.train                         # tiny, CPU-friendly default
    python -m ncpfast.train --preset mnist --data-dir DIR
    python -m ncpfast.train --resume RUN_DIR         # continue exactly where it stopped
    torchrun --nproc_per_node 2 -m ncpfast.train ... # data parallel
"""
import argparse
import json
import os
import sys
import time

from .checkpoint import CheckpointError
from .data import DataError
from .training.config import PRESETS, add_config_arguments, config_from_args, load_config, validate_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ncpfast.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    add_config_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print(json.dumps(PRESETS, indent=2))
        return 0
    from .training import Trainer, TrainingDiverged

    try:
        if args.resume:
            config_path = os.path.join(args.resume, "config.json")
            if not os.path.isfile(config_path):
                raise CheckpointError(f"--resume {args.resume}: no config.json there; is it a run directory?")
            config = load_config(config_path)
            for key, value in vars(args).items():  # explicit options override the saved config
                if value is not None and hasattr(config, key) and key not in ("preset", "run_dir"):
                    setattr(config, key, value)
            validate_config(config)
            run_dir = args.resume
        else:
            config = config_from_args(args)
            run_dir = config.run_dir or os.path.join("runs", f"{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
            config.run_dir = run_dir
        trainer = Trainer(config, run_dir, resume=bool(args.resume))
        metrics = trainer.train()
    except (ValueError, DataError, CheckpointError, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if trainer.ctx.is_main:
        test = metrics.get("test")
        summary = f"run directory: {run_dir} ({metrics['status']}, step {metrics['step']}/{metrics['total_steps']}, " \
                  f"{metrics['images_per_second']:.0f} images/s)"
        if test:
            summary += f"\ntest NLL (K={test['iw_samples']}): {test['nll_nats']:.2f} nats " \
                       f"({test['bits_per_dim']:.4f} bits/dim) on {test['test_images']} images"
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
