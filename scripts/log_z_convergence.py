"""log Z of a trained run's NCP prior against the number of importance samples,
for each proposal: the estimate, its standard error and its effective sample
size, repeated with independent draws so the spread between repeats can be
compared with the reported standard error.

    PYTHONPATH=. python scripts/log_z_convergence.py RUN_DIR \
        [--samples 10000 100000 1000000] [--proposals prior aggregate-posterior] \
        [--repeats 3] [--seed 0] [--out bench/results/log-z-convergence-cpu-2core.json]

RUN_DIR is a finished `python -m ncpfast.train` run (both stages). The
aggregate-posterior proposal needs a single-group model with flat latents
(mlp, conv), as in the pipeline's `--log-z-proposal`.
"""
import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch

from ncpfast.data import load_dataset
from ncpfast.stage2 import estimate_log_partition
from ncpfast.trained_run import load_ncp, load_run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished run directory (stages 1 and 2)")
    parser.add_argument("--samples", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="importance-sample counts (default: 1e4 1e5 1e6)")
    parser.add_argument("--proposals", nargs="+", default=["prior", "aggregate-posterior"],
                        choices=["prior", "aggregate-posterior"])
    parser.add_argument("--repeats", type=int, default=3, help="independent estimates per (proposal, count)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="JSON file to write (default: print only)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or min(args.samples) < 2:
        parser.error("--repeats must be >= 1 and every --samples value >= 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu")
    config, vae = load_run(args.run_dir, device)
    ncp = load_ncp(args.run_dir, vae)
    train, _ = load_dataset(config.data.dataset, config.data.data_dir)
    rows = []
    for proposal in args.proposals:
        for n in args.samples:
            for repeat in range(args.repeats):
                generator = torch.Generator(device).manual_seed(args.seed * 1_000_003 + 1000 * repeat + n % 997)
                start = time.process_time()
                estimate = estimate_log_partition(ncp, vae, train, device, n, proposal, generator)
                row = {**estimate.as_dict(), "repeat": repeat, "cpu_seconds": time.process_time() - start}
                rows.append(row)
                print(f"{proposal:>20} N={n:>8} repeat {repeat}: log Z = {row['log_z']:.4f} +- {row['stderr']:.4f}, "
                      f"ESS {row['ess']:.0f} ({100 * row['ess_fraction']:.2f}%), {row['cpu_seconds']:.0f} CPU s",
                      flush=True)
    result = {
        "script": "scripts/log_z_convergence.py",
        "command": " ".join(["python", "scripts/log_z_convergence.py"] + (argv or sys.argv[1:])),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "run_dir": args.run_dir,
        "run_config": {k: getattr(config, k) for k in ("preset", "model", "latent_dim", "epochs", "seed",
                                                       "ncp_epochs", "ncp_hidden")},
        "estimates": rows,
    }
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
