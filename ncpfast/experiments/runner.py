"""Runs an experiment's jobs, each a command line of the stable programs
(commands.py: train and sample in this process, evaluate as a child whose peak
memory is measured), reusing what is finished and resuming what was interrupted.

Layout under the runs directory, for a training T with its arguments hashed to H:

    T-H/seed0/                  python -m ncpfast.train ... --seed 0 --run-dir T-H/seed0
                                (H: the arguments and the code's fingerprint, hashed)
    T-H/seed0.experiment.json   the commands that made it and their seconds
    T-H/seed0-V-H2/             stage-1 copy + stage 2 with variant V's arguments
    T-H/seed0.evaluate/         copy of the finished run for ncpfast.evaluate/sample
        results/S-H3.json       one sampler setting's evaluation (--json) and peak memory
        samples/S.png           one sampler setting's grid (ncpfast.sample)
    logs/...                    every job's output (and traceback, if it failed)

The arguments and the code that runs (provenance.code_fingerprint) are part of
the directory names, so a changed definition or a code change never reuses a
stale run. A training run is finished when its metrics.json holds the
whole evaluation (both priors' NLL and FD); an interrupted one with a checkpoint
resumes with --resume; one that died before its first checkpoint starts over.
ncpfast.evaluate rewrites the "evaluation" of the run it is given, so it only
ever sees a copy.
"""
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from tqdm import tqdm

from ..atomic_files import write_json_atomic
from ..run_dir import RunDir
from . import commands
from .commands import Execution
from .definitions import Experiment, Sampler
from .provenance import code_fingerprint, code_version

# What a copy of a run leaves behind: the outputs that the copy's own programs rewrite.
_NOT_COPIED = (RunDir.METRICS, RunDir.TENSORBOARD, RunDir.SAMPLES, RunDir.SAMPLE_GRID, "*.experiment.json")
_STAGE2_KEYS = ("ncp", "evaluation")


@dataclass
class RunRecord:
    """One job's outcome: a training run (sampler ''), or one sampler setting's evaluation of one."""
    seed: int
    training: str
    variant: str
    sampler: str
    run_dir: str
    status: str = "pending"      # complete | unavailable | failed | planned
    reason: str = ""
    reused: bool = False
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0         # wall seconds of this job's commands, over all invocations
    seconds_now: float = 0.0     # of them, in this invocation
    evaluation: Optional[dict] = None
    peak_rss_mib: Optional[float] = None
    train_seconds: Optional[float] = None
    samples_png: Optional[str] = None
    code: list[str] = field(default_factory=list)  # provenance.code_version of each command that made it

    def to_json(self) -> dict:
        return asdict(self)


def digest(arguments: Sequence[str]) -> str:
    return hashlib.sha1("\0".join(arguments).encode()).hexdigest()[:8]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def complete_evaluation(evaluation) -> bool:
    """Both priors' NLL and FD are there."""
    return isinstance(evaluation, dict) and all(
        isinstance(evaluation.get(p), dict) and _number(evaluation[p].get("nll_nats"))
        and _number(evaluation[p].get("fd")) for p in ("base", "ncp"))


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def finished_run(run_dir: str) -> Optional[dict]:
    """The run's metrics.json when it holds the complete evaluation, else None."""
    metrics = read_json(RunDir(run_dir).metrics_path)
    return metrics if metrics is not None and complete_evaluation(metrics.get("evaluation")) else None


def copy_run(source: str, target: str, keep_stage2: bool) -> None:
    """A fresh copy of a finished run's stage 1 (and its stage 2 when keep_stage2)."""
    if os.path.exists(target):
        shutil.rmtree(target)
    ignore = list(_NOT_COPIED) + ([] if keep_stage2 else [RunDir.NCP])
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*ignore))
    metrics = read_json(RunDir(source).metrics_path) or {}
    write_json_atomic({k: v for k, v in metrics.items() if k not in _STAGE2_KEYS}, RunDir(target).metrics_path)


# The launcher between this process and a measured command (peak_memory.py: why).
_PEAK_MEMORY_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peak_memory.py")


def execute(command: list[str], log_path: str, stdout_path: Optional[str] = None) -> Execution:
    """Runs one child process (the sampler experiment's ncpfast.evaluate) to its end, its
    output appended to log_path (stdout to stdout_path when given), and measures its wall
    seconds and its own peak resident memory (through peak_memory.py, so that this
    process's memory, the trainings it ran included, does not count)."""
    for path in (log_path, stdout_path):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    peak_path = log_path + ".peak_kib"
    with open(log_path, "a") as log:
        log.write(f"$ {commands.shell_line(command)}\n")
        log.flush()
        out = open(stdout_path, "w") if stdout_path else log
        try:
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, _PEAK_MEMORY_LAUNCHER, peak_path, *command], stdout=out,
                                    stderr=log, env=commands.child_environment())
            try:
                proc.wait()
            except KeyboardInterrupt:
                # The child may not have seen the interrupt (a signal sent to this process only):
                # SIGTERM (forwarded by the launcher) lets a program checkpoint before it stops.
                proc.send_signal(signal.SIGTERM)
                proc.wait()
                raise
            seconds = time.perf_counter() - start
        finally:
            if stdout_path:
                out.close()
    peak_kib = _read_peak_kib(peak_path)
    return Execution(proc.returncode, seconds, peak_kib / 1024 if peak_kib is not None else None)


def _read_peak_kib(path: str) -> Optional[float]:
    """The launcher's measurement (None when the launcher itself failed), the file removed."""
    try:
        with open(path) as f:
            value = float(f.read())
        os.remove(path)
        return value
    except (OSError, ValueError):
        return None


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path) as f:
            tail = f.read().strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(t.strip() for t in tail)


class Runner:
    """Runs (or, with dry_run, lists) an experiment's jobs under runs_dir."""

    def __init__(self, runs_dir: str, dry_run: bool = False, say: Callable[[str], None] = tqdm.write):
        self.runs_dir, self.dry_run, self.say = runs_dir, dry_run, say
        self.grids: list[tuple] = []  # (label, PNG) of the sampler experiment's grids, filled by run()

    # --- the plan ------------------------------------------------------------------------

    def run(self, experiment: Experiment, seeds: Sequence[int], quick: bool) -> list[RunRecord]:
        sizes = experiment.sizes(quick)
        records: list[RunRecord] = []
        self.grids = []
        jobs = sum(len(seeds) * (1 + len(t.variants) + len(sizes.samplers)) for t in experiment.trainings)
        code = code_fingerprint()
        with tqdm(total=jobs, desc=experiment.name, unit="run", disable=self.dry_run) as bar:
            for seed in seeds:
                for training in experiment.trainings:
                    train_args = sizes.train_args + training.train_args
                    run_dir = os.path.join(self.runs_dir, f"{training.key}-{digest(train_args + (code,))}",
                                           f"seed{seed}")
                    primary = self._training(RunRecord(seed, training.key, "", "", run_dir), train_args)
                    records.append(primary)
                    bar.update()
                    for key, (_, variant_args) in training.variants.items():
                        target = f"{run_dir}-{key}-{digest(variant_args)}"
                        records.append(self._variant(RunRecord(seed, training.key, key, "", target), primary,
                                                     variant_args))
                        bar.update()
                    for sampler in sizes.samplers:
                        records.append(self._sampler(primary, sampler, sizes.evaluate_args))
                        bar.update()
                    if sizes.samplers and seed == seeds[0]:
                        self._sample_grids(primary, sizes.samplers, sizes.sample_images, records)
        return records

    # --- the three kinds of job ----------------------------------------------------------

    def _training(self, record: RunRecord, train_args) -> RunRecord:
        history_path = record.run_dir + ".experiment.json"
        history = read_json(history_path) or {"commands": [], "seconds": 0.0}
        train = commands.python_command("train")
        commands.check_arguments("train", train_args)
        metrics = finished_run(record.run_dir)
        if metrics is not None:
            return self._reuse(record, metrics, history)
        if os.path.isfile(RunDir(record.run_dir).latest_checkpoint):
            command = train + ["--resume", record.run_dir, *commands.QUIET["train"]]
            what = "resuming"
        else:
            command = (train + list(train_args) + ["--seed", str(record.seed), "--run-dir", record.run_dir]
                       + list(commands.QUIET["train"]))
            what = "training"
            history = {"commands": [], "seconds": 0.0}
            if os.path.exists(record.run_dir) and not self.dry_run:
                shutil.rmtree(record.run_dir)  # died before its first checkpoint: nothing to resume
        if not self.dry_run:
            _remove_derived(record.run_dir)
        return self._run_train_command(record, command, what, history, history_path)

    def _variant(self, record: RunRecord, primary: RunRecord, variant_args) -> RunRecord:
        history_path = record.run_dir + ".experiment.json"
        history = read_json(history_path) or {"commands": [], "seconds": 0.0}
        commands.check_arguments("train", variant_args)
        metrics = finished_run(record.run_dir)
        if metrics is not None:
            return self._reuse(record, metrics, history)
        if primary.status not in ("complete", "planned"):
            return self._failed(record, f"its stage-1 run failed ({primary.run_dir})")
        command = (commands.python_command("train") + ["--stage", "2", "--from", record.run_dir]
                   + list(variant_args) + list(commands.QUIET["train"]))
        if not self.dry_run:
            copy_run(primary.run_dir, record.run_dir, keep_stage2=False)
        history = {"commands": [f"(copy of {primary.run_dir}'s stage 1)"], "seconds": 0.0, "code": primary.code}
        return self._run_train_command(record, command, "stage 2 of", history, history_path)

    def _sampler(self, primary: RunRecord, sampler: Sampler, evaluate_args) -> RunRecord:
        arguments = sampler.cli_args() + tuple(evaluate_args)
        copy = primary.run_dir + ".evaluate"
        record = RunRecord(primary.seed, primary.training, "", sampler.key, copy)
        result_path = os.path.join(copy, "results", f"{sampler.key}-{digest(arguments)}.json")
        commands.check_arguments("evaluate", arguments)
        result = read_json(result_path)
        if result is not None and complete_evaluation(result.get("evaluation")):
            record.reused, record.status = True, "complete"
            record.evaluation, record.peak_rss_mib = result["evaluation"], result.get("peak_rss_mib")
            record.commands, record.seconds = result.get("commands", []), result.get("seconds", 0.0)
            record.code = result.get("code", [])
            self.say(f"reused: {sampler.label}, seed {record.seed} ({result_path})")
            return record
        if primary.status not in ("complete", "planned"):
            return self._failed(record, f"its training run failed ({primary.run_dir})")
        command = (commands.python_command("evaluate") + [copy, "--json", "--seed", str(primary.seed)]
                   + list(arguments))
        record.commands = [commands.shell_line(command)]
        if self.dry_run:
            return self._planned(record, "evaluate")
        self._ensure_copy(primary.run_dir, copy)
        self.say(f"evaluating: {sampler.label}, seed {record.seed}")
        stdout_path = result_path + ".stdout"
        done = execute(command, self._log_path(copy, sampler.key), stdout_path)
        record.seconds = record.seconds_now = done.seconds
        record.code = [code_version()]
        evaluation = _json_from_output(stdout_path)
        if done.returncode != 0 or not complete_evaluation(evaluation):
            return self._failed(record, f"exit status {done.returncode}: "
                                        f"{_log_tail(self._log_path(copy, sampler.key))}")
        record.status, record.evaluation, record.peak_rss_mib = "complete", evaluation, done.peak_rss_mib
        write_json_atomic({"evaluation": evaluation, "peak_rss_mib": done.peak_rss_mib, "seconds": done.seconds,
                           "commands": record.commands, "code": record.code, "sampler": asdict(sampler)}, result_path)
        os.remove(stdout_path)
        return record

    def _sample_grids(self, primary: RunRecord, samplers, images: int, records: list[RunRecord]) -> None:
        """Grids of the base prior and of each method and mode at its largest setting (first seed only),
        added to self.grids as (label, PNG path)."""
        if primary.status not in ("complete", "planned"):
            return
        largest: dict[tuple, Sampler] = {}
        for s in samplers:
            if s.amount > largest.get((s.method, s.mode), Sampler("", "", -1)).amount:
                largest[(s.method, s.mode)] = s
        copy = primary.run_dir + ".evaluate"
        def evaluated(key):
            return next((r for r in records if r.sampler == key and r.seed == primary.seed), None)

        def chosen_step_size(key):  # the step size the setting's evaluation used
            record = evaluated(key)
            return (((record.evaluation or {}).get("ncp") or {}).get("langevin_step_size")
                    if record is not None else None)

        settings = [("base", "base prior", ("--method", "base"))] + [
            (s.key, s.label, s.sample_args(chosen_step_size(s.key))) for s in largest.values()]
        for key, label, arguments in settings:
            out = RunDir(copy).sample_grid_at(f"{key}-n{images}.png")
            evaluated_record = evaluated(key)
            commands.check_arguments("sample", arguments)
            if evaluated_record and evaluated_record.status != "complete":
                continue
            if not os.path.isfile(out):
                command = (commands.python_command("sample") + [copy, "-n", str(images), "--seed",
                                                                str(primary.seed), "--out", out] + list(arguments))
                if self.dry_run:
                    self.say(f"planned (sample grid): {commands.shell_line(command)}")
                    continue
                self._ensure_copy(primary.run_dir, copy)
                log = self._log_path(copy, f"sample-{key}")
                done = commands.run_in_process("sample", command[len(commands.python_command("sample")):], log)
                if done.returncode != 0 or not os.path.isfile(out):
                    self.say(f"sample grid {key} failed: {_log_tail(log)}")
                    continue
            self.grids.append((f"{label}, seed {primary.seed}", out))

    # --- helpers --------------------------------------------------------------------------

    def _run_train_command(self, record, command, what, history, history_path) -> RunRecord:
        record.commands = history["commands"] + [commands.shell_line(command)]
        record.seconds = history["seconds"]
        if self.dry_run:
            return self._planned(record, what)
        self.say(f"{what}: {record.run_dir}")
        log = self._log_path(record.run_dir, "train")
        done = commands.run_in_process("train", command[len(commands.python_command("train")):], log)
        record.seconds += done.seconds
        record.seconds_now = done.seconds
        record.code = history.get("code", []) + [code_version()]
        write_json_atomic({"commands": record.commands, "seconds": record.seconds, "code": record.code}, history_path)
        metrics = finished_run(record.run_dir)
        if done.returncode != 0 or metrics is None:
            return self._failed(record, f"exit status {done.returncode}: {_log_tail(log)} (log: {log})")
        return self._complete(record, metrics)

    def _reuse(self, record: RunRecord, metrics: dict, history: dict) -> RunRecord:
        record.reused = True
        record.commands, record.seconds = history["commands"], history["seconds"]
        record.code = history.get("code", [])
        self.say(f"reused: {record.run_dir} (its metrics.json holds the complete evaluation)")
        return self._complete(record, metrics)

    @staticmethod
    def _complete(record: RunRecord, metrics: dict) -> RunRecord:
        record.status, record.evaluation = "complete", metrics["evaluation"]
        record.train_seconds = metrics.get("train_seconds")
        samples = RunDir(record.run_dir).sample_grid
        record.samples_png = samples if os.path.isfile(samples) else None
        return record

    def _failed(self, record: RunRecord, reason: str) -> RunRecord:
        record.status, record.reason = "failed", reason
        self.say(f"failed: {record.run_dir}: {reason}")
        return record

    def _planned(self, record: RunRecord, what: str) -> RunRecord:
        record.status = "planned"
        self.say(f"planned ({what}): {record.commands[-1]}")
        return record

    def _ensure_copy(self, source: str, copy: str) -> None:
        if not os.path.isfile(RunDir(copy).ncp_checkpoint):
            copy_run(source, copy, keep_stage2=True)

    def _log_path(self, run_dir: str, what: str) -> str:
        relative = os.path.relpath(run_dir, self.runs_dir).replace(os.sep, "_")
        return os.path.join(self.runs_dir, "logs", f"{relative}.{what}.log")


def _remove_derived(run_dir: str) -> None:
    """The copies made from an earlier state of a run that is about to change (variants, evaluations)."""
    parent, name = os.path.split(run_dir)
    if not os.path.isdir(parent or "."):
        return
    for entry in os.listdir(parent or "."):
        if entry.startswith(name + "-") or entry == name + ".evaluate":
            path = os.path.join(parent, entry)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def _json_from_output(path: str) -> Optional[dict]:
    """The JSON object ncpfast.evaluate --json prints (whatever else went to stdout before it)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start = text.find("{")
    while start >= 0:
        try:
            return json.loads(text[start:])
        except ValueError:
            start = text.find("\n{", start + 1)
            start = start + 1 if start >= 0 else -1
    return None
