"""Command lines of the stable programs (python -m ncpfast.train | evaluate | sample).

The experiments run the programs as subprocesses (each run's peak memory and
seconds are its own, and a run is exactly the command it prints). Their options
are checked against the programs' own argument parsers before anything runs, so
a definition that passes an option a program lacks fails at once, naming it.
"""
import functools
import importlib
import os
import shlex
import sys
from collections.abc import Sequence

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


@functools.cache
def accepted_options(program: str) -> frozenset:
    """Every option string of the program's argument parser (ncpfast.cli.PROGRAM.build_parser)."""
    if program not in PROGRAMS:
        raise ValueError(f"program must be one of {PROGRAMS}, got {program!r}")
    parser = importlib.import_module(f"ncpfast.cli.{program}").build_parser()
    return frozenset(option for action in parser._actions for option in action.option_strings)


def check_arguments(program: str, arguments: Sequence[str]) -> None:
    """Raises ValueError naming every option in `arguments` that the program does not accept."""
    accepted = accepted_options(program)
    unknown = sorted({a.split("=", 1)[0] for a in arguments if a.startswith("--")} - accepted)
    if unknown:
        raise ValueError(f"python -m ncpfast.{program} has no option {', '.join(unknown)}: fix the experiment's "
                         "definition (ncpfast/experiments/definitions.py)")


# The children's own progress bars off (the experiment shows one over its runs); only train has them.
QUIET = {"train": ("--no-progress",), "evaluate": (), "sample": ()}


def shell_line(command: Sequence[str]) -> str:
    """A command as a user would type it: `python -m ncpfast...` instead of this interpreter's path."""
    words = list(command)
    if words and words[0] == sys.executable:
        words[0] = "python"
    return " ".join(shlex.quote(w) for w in words)
