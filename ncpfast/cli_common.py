"""Pieces the three command-line programs share."""
import json
import os

import torch

from .checkpoint import CheckpointError
from .data import DataError
from .ncp.stage2 import RunDirError
from .training import TrainingDiverged
from .training.trainer import pick_device

# Errors that are the user's to fix: printed as one line, exit status 2.
USER_ERRORS = (ValueError, DataError, CheckpointError, RunDirError, TrainingDiverged, FileNotFoundError)


def device_from(request: str) -> torch.device:
    return pick_device(request)


def merge_metrics(run_dir: str, key: str, value) -> None:
    """Adds one section to the run's metrics.json (created when missing)."""
    path = os.path.join(run_dir, "metrics.json")
    metrics = {}
    if os.path.isfile(path):
        with open(path) as f:
            metrics = json.load(f)
    metrics[key] = value
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=2)
    os.replace(tmp, path)
