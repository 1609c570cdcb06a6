"""Checkpoints: written atomically, read without running code.

Writing: a temporary file in the same directory, flushed to disk, then renamed
over the target, so a crash never leaves a truncated checkpoint behind (a kill
part-way leaves at most a stale temporary, which `remove_stale_temporaries`
deletes).

Reading: `torch.load(..., weights_only=True)`. Everything ncpfast saves is plain
data (tensors, numbers, strings, None, lists, tuples, dicts: state_dicts,
configs as dicts, RNG states as tensors), so no allow-list of classes is
needed; a file that holds anything else is refused, because unpickling it
could run arbitrary code.
"""
import json
import os
import pickle
import re
import tempfile

import torch

_TEMPORARY_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or holds more than tensors and plain data."""


def _temporary_prefix(path: str) -> str:
    return "." + os.path.basename(path) + "."


def save_atomic(obj, path: str) -> None:
    """torch.save(obj) to `path` through a temporary file, fsync, and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temporary_prefix(path), suffix=_TEMPORARY_SUFFIX)
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


def remove_stale_temporaries(path: str) -> list:
    """Deletes the temporaries that save_atomic(..., path) leaves when its process is
    killed part-way (e.g. `.latest.pt.k3j_x9a2.tmp`); returns their paths. Call it
    only where no other process is saving `path` at the same time."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return []
    pattern = re.compile(re.escape(_temporary_prefix(path)) + r"[^.]+" + re.escape(_TEMPORARY_SUFFIX) + "$")
    removed = []
    for name in os.listdir(directory):
        if pattern.match(name):
            stale = os.path.join(directory, name)
            try:
                os.unlink(stale)
                removed.append(stale)
            except FileNotFoundError:
                pass
    return removed


def write_json_atomic(obj, path: str) -> None:
    """JSON written to a temporary file, then renamed over `path`."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def load(path: str, map_location="cpu"):
    """The checkpoint at `path`, unpickled with weights_only=True. Raises CheckpointError
    for a missing or corrupt file and for one that holds other objects."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found is None:  # e.g. "Unsupported operand": bytes that are no pickle at all
            raise CheckpointError(f"checkpoint {path} is unreadable: {error}") from error
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data (it refers to "
            f"{found.group(1)}), so it was not loaded: unpickling it could run arbitrary code. ncpfast "
            f"writes only tensors, numbers, strings, lists and dicts; this file was written by other code "
            f"or modified. If you trust its source, load it yourself with torch.load(path, weights_only=False) "
            f"and save its tensors and plain data again.") from None
    except Exception as error:  # torch raises several types for a corrupt file
        raise CheckpointError(f"checkpoint {path} is unreadable: {error}") from error
