"""`python -m ncpfast.data` (console script `ncpfast-data`): prepare a data set,
or verify a prepared one. A DataError prints `error: ...` and exits with 2."""
import argparse
import os
import sys

from .errors import DataError
from .prepare import default_jobs, prepare
from .prepared import MANIFEST, SPLITS, check_array, read_manifest
from .recipes import DATASETS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ncpfast.data", description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    prep = commands.add_parser(
        "prepare", help="decode a data set once into uint8 arrays read by memory map",
        description="Decodes DATASET from --data-dir (its raw files, or NVAE's LMDBs) into --out: uint8 .npy "
                    "arrays and a manifest.json (shapes, sha256, recipe). Training, stage 2 and the evaluation "
                    "read --out with --data-dir as they read the raw files. Atomic: a killed prepare leaves "
                    "no directory that looks complete.")
    prep.add_argument("dataset", choices=[d for d in DATASETS], metavar="DATASET",
                      help=f"one of {', '.join(DATASETS)}")
    prep.add_argument("--data-dir", metavar="DIR", help="the raw data set (not needed for mnist-embedded)")
    prep.add_argument("--out", required=True, metavar="DIR", help="the prepared directory to write")
    prep.add_argument("--jobs", type=int, default=None, metavar="N",
                      help=f"decoding processes (default: the cores this process may use, {default_jobs()})")
    prep.add_argument("--force", action="store_true", help="replace --out if it exists")
    prep.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    verify = commands.add_parser("verify", help="check a prepared directory's files against its manifest",
                                 description="Checks every array of a prepared directory against manifest.json "
                                             "(presence, shape, dtype, sha256).")
    verify.add_argument("directory", metavar="DIR")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "prepare":
            if args.jobs is not None and args.jobs < 1:
                raise DataError(f"--jobs must be >= 1, got {args.jobs}")
            manifest = prepare(args.dataset, args.data_dir, args.out, jobs=args.jobs, force=args.force,
                               progress=args.progress)
            counts = ", ".join(f"{name} {manifest['splits'][name]['count']}" for name in SPLITS)
            print(f"prepared {args.dataset} in {os.path.abspath(args.out)} ({counts} images); "
                  f"train with --dataset {args.dataset} --data-dir {args.out}")
        else:
            manifest = read_manifest(args.directory)
            for name in SPLITS:
                entry = manifest.get("splits", {}).get(name) or {}
                for kind in ("images", "labels"):
                    if entry.get(kind):
                        check_array(args.directory, entry[kind])
            print(f"{args.directory}: {manifest['dataset']}, every array matches {MANIFEST}")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
