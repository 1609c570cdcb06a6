"""Pieces the three command-line programs share."""
import json
import os

from .checkpoint import CheckpointError, write_json_atomic
from .data import DataError
from .ncp.stage2 import RunDirError
from .training import TrainingDiverged

# Errors that are the user's to fix: printed as one line, exit status 2.
USER_ERRORS = (ValueError, DataError, CheckpointError, RunDirError, TrainingDiverged, FileNotFoundError)


def merge_metrics(run_dir: str, key: str, value) -> None:
    """Adds one section to the run's metrics.json (created when missing)."""
    path = os.path.join(run_dir, "metrics.json")
    metrics = {}
    if os.path.isfile(path):
        with open(path) as f:
            metrics = json.load(f)
    metrics[key] = value
    write_json_atomic(metrics, path)
