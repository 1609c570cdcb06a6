"""The default run (`python -m ncpfast.train` without arguments) over several seeds,
recorded: each run's metrics (stage 1's summary, stage 2's and the evaluation's),
its CPU and wall seconds, with the machine and commit, in one JSON file that
docs/results.md's default section is written from.

    OMP_NUM_THREADS=1 python scripts/default_seeds.py --seeds 3 --jobs 2 \\
        --runs-dir runs/default-seeds --out bench/results/default-cpu-2core-epyc.json

A finished run (its metrics.json holds an evaluation) is reused, so a stopped
script continues where it stopped.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ncpfast.atomic_files import write_json_atomic  # noqa: E402
from ncpfast.experiments.provenance import code_version, machine  # noqa: E402


def run_seed(seed: int, runs_dir: str) -> dict:
    run_dir = os.path.join(runs_dir, f"seed{seed}")
    metrics_path = os.path.join(run_dir, "metrics.json")
    command = [sys.executable, "-m", "ncpfast.train", "--seed", str(seed), "--run-dir", run_dir, "--no-progress"]
    record = {"seed": seed, "command": " ".join(["python"] + command[1:]), "run_dir": run_dir}
    if not _finished(metrics_path):
        os.makedirs(runs_dir, exist_ok=True)
        start = time.perf_counter()
        with open(os.path.join(runs_dir, f"seed{seed}.log"), "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            _, status, usage = os.wait4(process.pid, 0)
        record.update(wall_seconds=time.perf_counter() - start, cpu_seconds=usage.ru_utime + usage.ru_stime,
                      peak_rss_mib=usage.ru_maxrss / 1024, exit_status=os.waitstatus_to_exitcode(status))
    else:
        record["reused"] = True
    if _finished(metrics_path):
        with open(metrics_path) as f:
            metrics = json.load(f)
        metrics.pop("history", None)
        record["metrics"] = metrics
    return record


def _finished(path: str) -> bool:
    try:
        with open(path) as f:
            return "evaluation" in json.load(f)
    except (OSError, ValueError):
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--runs-dir", default="runs/default-seeds")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    args = parser.parse_args(argv)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        records = list(pool.map(lambda s: run_seed(s, args.runs_dir), range(args.seeds)))
    write_json_atomic({"what": "python -m ncpfast.train (the default preset) over seeds",
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
                       "code": code_version(), "threads_per_run": os.environ.get("OMP_NUM_THREADS", "torch default"),
                       "jobs": args.jobs, "runs": records}, args.out)
    failed = [r["seed"] for r in records if "metrics" not in r]
    print(f"{args.out}: {len(records) - len(failed)} runs" + (f"; failed seeds {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
