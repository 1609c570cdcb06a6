"""What the command-line programs share."""
import argparse
import sys

from ..checkpoint import CheckpointError
from ..config import EvaluationConfig, SamplerConfig, in_flag_terms, section_values
from ..data import DataError
from ..run_dir import RunDirError
from ..training import TrainingDiverged

# Errors that are the user's to fix: printed as one line, exit status 2.
USER_ERRORS = (ValueError, DataError, CheckpointError, RunDirError, TrainingDiverged, FileNotFoundError)
AUTO = "auto"


def report_user_error(error: Exception) -> int:
    """Prints a user's error as one line, settings named by their flags; the exit status 2."""
    print(f"error: {in_flag_terms(str(error))}", file=sys.stderr)
    return 2


def step_size_or_auto(text: str):
    """--step-size of python -m ncpfast.evaluate: a number, or auto (tuned first)."""
    if text == AUTO:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def sampler_from_args(args: argparse.Namespace) -> SamplerConfig:
    """The SamplerConfig of the parsed sampler flags and --method (its checks name
    the bad value); --step-size auto leaves the default until the tuning picks one."""
    values = section_values(args, "sampler")
    if values.get("step_size") == AUTO:
        del values["step_size"]
    return SamplerConfig(method=args.method, **values)


def evaluation_from_args(args: argparse.Namespace, **fixed) -> EvaluationConfig:
    """The EvaluationConfig of the parsed evaluation flags (the defaults for those not given)."""
    return EvaluationConfig(**{**section_values(args, "evaluation"), **fixed})


def run_value(args: argparse.Namespace, name: str, default):
    """A run-section flag's value (seed, device), or default when not given."""
    return section_values(args, "run").get(name, default)


__all__ = ["AUTO", "USER_ERRORS", "report_user_error", "evaluation_from_args", "run_value", "sampler_from_args",
           "step_size_or_auto"]
