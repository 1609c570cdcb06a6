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
import os
import pickle
import re

import torch

from .atomic_files import atomic_write, remove_stale_temporaries

__all__ = ["CheckpointError", "save_atomic", "load", "remove_stale_temporaries"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or holds more than tensors and plain data."""


def save_atomic(obj, path: str) -> None:
    """torch.save(obj) to `path` atomically (atomic_files.atomic_write)."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def load_weights(module: torch.nn.Module, weights: dict, path: str) -> None:
    """module.load_state_dict(weights), strict; CheckpointError naming what does not
    fit when the checkpoint at `path` holds another architecture (for instance a
    hierarchical run written before ncpfast's model became NVAE's, 2026-12-05)."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as error:
        ours = module.state_dict()
        missing = sorted(set(ours) - set(weights))
        unexpected = sorted(set(weights) - set(ours))
        reshaped = sorted(k for k in set(ours) & set(weights) if tuple(ours[k].shape) != tuple(weights[k].shape))
        raise CheckpointError(
            f"{path}: its weights do not fit the model its config.json describes ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape; first: "
            f"{(missing + unexpected + reshaped)[:3]}). Was it written by another version of ncpfast? Hierarchical "
            "runs from before its NVAE-equal model (2026-12-05) need that version or a new stage 1") from error


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
