"""Command lines of the stable programs (python -m ncpfast.train | evaluate | sample),
and what this build's programs accept, read from their --help.

The experiments call the programs as subprocesses, never their Python APIs, so
they keep working while those APIs move; an option a program does not (yet)
accept makes the run that needs it "not available in this build".
"""
import functools
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence

import ncpfast

from .definitions import SAMPLING_MODE_FLAG, Sampler

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
def help_text(program: str) -> str:
    result = subprocess.run(python_command(program) + ["--help"], capture_output=True, text=True,
                            env=child_environment(), timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"python -m ncpfast.{program} --help failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def accepted_options(program: str) -> frozenset:
    """Every --option the program's --help names."""
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text(program)))


def option_names(arguments: Iterable[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in arguments if a.startswith("--")]


def missing_options(program: str, arguments: Sequence[str]) -> list[str]:
    accepted = accepted_options(program)
    return sorted({name for name in option_names(arguments) if name not in accepted})


def unavailable_reason(program: str, arguments: Sequence[str]) -> str:
    """'' when the program accepts every option, else the sentence the reports print."""
    missing = missing_options(program, arguments)
    return f"not available in this build: {', '.join(missing)} missing" if missing else ""


def boolean_flag(program: str, name: str, value: bool) -> list[str]:
    """A boolean option in the syntax the program accepts: `--name/--no-name`
    (argparse.BooleanOptionalAction) where its --help shows --no-name, else `--name true|false`."""
    if f"--no-{name}" in accepted_options(program):
        return [f"--{name}" if value else f"--no-{name}"]
    return [f"--{name}", "true" if value else "false"]


def quiet(program: str) -> list[str]:
    """The children's own progress bars off where they have a switch (the experiment shows one over its runs)."""
    return boolean_flag(program, "progress", False) if "--progress" in accepted_options(program) else []


def sampler_arguments(program: str, sampler: Sampler) -> tuple[str, ...]:
    """A sampler setting's options for ncpfast.evaluate or ncpfast.sample. A build without the
    sampling-mode option samples group-wise only: its group-wise settings run without the option."""
    with_mode = sampler.mode != "group" or SAMPLING_MODE_FLAG in accepted_options(program)
    return sampler.cli_args(with_mode)


def shell_line(command: Sequence[str]) -> str:
    """A command as a user would type it: `python -m ncpfast...` instead of this interpreter's path."""
    words = list(command)
    if words and words[0] == sys.executable:
        words[0] = "python"
    return " ".join(shlex.quote(w) for w in words)
