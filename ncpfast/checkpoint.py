"""Checkpoints written atomically: a temporary file in the same directory,
flushed to disk, then renamed over the target, so a crash never leaves a
truncated checkpoint behind."""
import json
import os
import tempfile

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable."""


def save_atomic(obj, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(obj, path: str) -> None:
    """JSON written to a temporary file, then renamed over `path`."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def load(path: str, map_location="cpu"):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for a corrupt file
        raise CheckpointError(f"checkpoint {path} is unreadable: {error}") from error
