"""Command lines of the stable programs (python -m ncpfast.train | evaluate | sample).

An experiment's job is a command line a user could type, and it is recorded as
such. train and sample run in this process, through the programs' own entry
points (ncpfast.cli.*.main, thin layers over ncpfast.pipeline); evaluate runs as
a child process, because the peak memory of its sampler is what the sampler
experiment measures. Every argument list is read by the program's own parser
before anything runs, so a definition that passes an option a program lacks
fails at once, naming it.
"""
import argparse
import contextlib
import importlib
import io
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import ncpfast

PROGRAMS = ("train", "evaluate", "sample")


def python_command(program: str) -> list[str]:
    if program not in PROGRAMS:
        raise ValueError(f"program must be one of {PROGRAMS}, got {program!r}")
    return [sys.executable, "-m", f"ncpfast.{program}"]


def child_environment() -> dict[str, str]:
    """The children import the same ncpfast as this process, whatever their working directory."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(ncpfast.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# The positional argument evaluate and sample take, for reading their options alone.
_RUN_DIR_PLACEHOLDER = {"train": [], "evaluate": ["RUN_DIR"], "sample": ["RUN_DIR"]}


def parse(program: str, arguments: Sequence[str]) -> argparse.Namespace:
    """The arguments as the program's own parser (ncpfast.cli.PROGRAM.build_parser)
    reads them; ValueError naming every option it does not accept, or saying which
    value it refused."""
    if program not in PROGRAMS:
        raise ValueError(f"program must be one of {PROGRAMS}, got {program!r}")
    parser = importlib.import_module(f"ncpfast.cli.{program}").build_parser()
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            namespace, unknown = parser.parse_known_args(_RUN_DIR_PLACEHOLDER[program] + list(arguments))
    except SystemExit:
        refusal = said.getvalue().strip().splitlines()[-1:] or ["(no message)"]
        raise ValueError(f"python -m ncpfast.{program} refuses {shlex.join(arguments)}: {refusal[0]}; fix the "
                         "experiment's definition (ncpfast/experiments/definitions.py)") from None
    options = sorted({a.split("=", 1)[0] for a in unknown if a.startswith("--")})
    if unknown:
        raise ValueError(f"python -m ncpfast.{program} has no option {', '.join(options) or shlex.join(unknown)}: "
                         "fix the experiment's definition (ncpfast/experiments/definitions.py)")
    return namespace


def check_arguments(program: str, arguments: Sequence[str]) -> None:
    """Raises ValueError naming every option in `arguments` that the program does not accept."""
    parse(program, arguments)


@dataclass
class Execution:
    returncode: int
    seconds: float
    peak_rss_mib: Optional[float] = None  # a child's own peak (in-process runs: None)


def run_in_process(program: str, arguments: Sequence[str], log_path: str) -> Execution:
    """Runs `python -m ncpfast.PROGRAM ARGUMENTS` in this process (its main), its
    output and any traceback appended to log_path. An interrupt (or the trainer's
    stop after a signal, which checkpoints first) stops the experiment too."""
    main = importlib.import_module(f"ncpfast.cli.{program}").main
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"$ {shell_line(python_command(program) + list(arguments))}  (in process)\n")
        log.flush()
        start = time.perf_counter()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                returncode = main(list(arguments))
            except Exception:  # the job failed, the experiment goes on (its log has the traceback)
                traceback.print_exc(file=log)
                returncode = 1
    return Execution(returncode, time.perf_counter() - start)


# The children's own progress bars off (the experiment shows one over its runs); only train has them.
QUIET = {"train": ("--no-progress",), "evaluate": (), "sample": ()}


def shell_line(command: Sequence[str]) -> str:
    """A command as a user would type it: `python -m ncpfast...` instead of this interpreter's path."""
    words = list(command)
    if words and words[0] == sys.executable:
        words[0] = "python"
    return " ".join(shlex.quote(w) for w in words)
