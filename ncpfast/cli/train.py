"""python -m ncpfast.train: stage 1 (the VAE), then stage 2 (the NCP classifiers),
then the evaluation of both priors. No arguments: the `default` preset (a
single-latent MLP VAE on the embedded MNIST, where NCP's effect shows within
minutes on a CPU), end to end.

    python -m ncpfast.train                         # the default preset, both stages
    python -m ncpfast.train --preset tiny           # the small hierarchical NVAE
    python -m ncpfast.train --stage 1               # the VAE only
    python -m ncpfast.train --stage 2 --from RUN_DIR  # NCP classifiers on a trained VAE
    python -m ncpfast.train --preset mnist --data-dir DIR
    python -m ncpfast.train --resume RUN_DIR         # continue exactly where it stopped
    torchrun --nproc_per_node 2 -m ncpfast.train ... # data parallel
"""
import argparse
import json
import os
import sys
import time

from ..config import DEFAULT_PRESET, PRESETS, add_config_flags, from_dotted, given_values, load_config, resolve_config
from ..config.options import TRAIN
from ..evaluation import format_table
from ..run_dir import RunDir
from .common import USER_ERRORS, report_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ncpfast.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--stage", choices=["1", "2", "both"], default="both",
                     help="1: the VAE; 2: the NCP classifiers on --from RUN_DIR; both (default)")
    run.add_argument("--from", dest="from_run", metavar="RUN_DIR", help="the stage-1 run that --stage 2 uses")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    run.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    add_config_flags(parser, TRAIN, {"run": run})
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print(json.dumps({name: {"parent": p.parent, "about": p.about, "changes": p.changes}
                          for name, p in PRESETS.items()}, indent=2))
        return 0
    from .. import pipeline
    from ..runtime import init_distributed, shutdown_distributed

    try:
        if args.stage == "2":
            if not args.from_run:
                raise ValueError("--stage 2 needs --from RUN_DIR (a stage-1 run directory)")
            source = RunDir(args.from_run)
            config = load_config(source.require_config())
            source.stage1_checkpoint()  # the clear error before any set-up
            unfinished = source.unfinished_stage1()
            if unfinished:
                print(f"warning: {unfinished} in {source}: stage 2 trains on those weights; finish it first with "
                      f"python -m ncpfast.train --resume {source}", file=sys.stderr)
            config = _with_overrides(config, args)
            _report_stage2(config, pipeline.stage2_and_evaluation(config, args.from_run,
                                                                  init_distributed(config.run.device)))
            return 0
        if args.resume:
            config = load_config(RunDir(args.resume).require_config())
            config = _with_overrides(config, args)
            run_dir = args.resume
        else:
            given = given_values(args)
            preset = given.pop("run.preset", DEFAULT_PRESET)
            run_dir = given.get("run.run_dir") or os.path.join("runs", f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
            config = resolve_config(preset, {**given, "run.run_dir": run_dir})
            config.evaluation.check_files()
        metrics, distributed = pipeline.train_stage1(config, run_dir, resume=bool(args.resume),
                                                     final_nll=args.stage == "1")
        if distributed.is_main:
            print(_stage1_summary(run_dir, metrics))
        if args.stage == "both" and metrics["status"] == "complete":
            _report_stage2(config, pipeline.stage2_and_evaluation(config, run_dir, distributed))
    except USER_ERRORS as error:
        return report_user_error(error)
    finally:
        # Gloo's threads must stop before the interpreter exits, or a rank can
        # die in std::terminate after its work is done.
        shutdown_distributed()
    return 0


def _with_overrides(config, args):
    """The saved config with the options given on the command line (but its preset
    and run directory) in place of its values."""
    given = {k: v for k, v in given_values(args).items() if k not in ("run.preset", "run.run_dir")}
    config = from_dotted(given, config)
    config.evaluation.check_files()
    return config


def _stage1_summary(run_dir: str, metrics: dict) -> str:
    text = (f"stage 1: {run_dir} ({metrics['status']}, step {metrics['step']}/{metrics['total_steps']}, "
            f"{metrics['images_per_second']:.0f} images/s)")
    test = metrics.get("test")
    if test:
        text += (f"\ntest NLL (K={test['iw_samples']}): {test['nll_nats']:.2f} nats "
                 f"({test['bits_per_dim']:.4f} bits/dim) on {test['test_images']} images")
    return text


def _report_stage2(config, outcome) -> None:
    """Prints stage 2's summary and the evaluation (rank 0's outcome; the other ranks have None)."""
    if outcome is None:
        return
    summary, evaluation = outcome
    at_chance = summary["groups_at_chance"]
    print(f"stage 2: {summary['groups']} classifiers, held-out accuracy "
          f"{', '.join(f'{a:.3f}' for a in summary['val_accuracy'])}; log Z = {summary['log_z']:.4f} "
          f"+- {summary['log_z_stderr']:.4f} (effective sample size "
          f"{100 * summary['log_z_estimate']['ess_fraction']:.1f}%)"
          + (f"; groups at chance (r close to 1): {at_chance}" if at_chance else ""))
    if summary["log_z_estimate"].get("warning"):
        print(f"warning: {summary['log_z_estimate']['warning']}", file=sys.stderr)
    print(format_table(evaluation.metrics))
    per = "per image, joint" if config.sampler.mode == "joint" else "per latent group"
    print(f"{RunDir.SAMPLE_GRID}: base prior (left) | NCP prior, SIR with {config.sampler.num_proposals} proposals "
          f"{per} (right)")


if __name__ == "__main__":
    sys.exit(main())
