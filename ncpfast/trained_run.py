"""A trained run opened for use: its config and VAE (load_run), its NCP
(load_ncp, a FlatNCP or GroupedNCP by what stage 2 saved), the log Z stage 2
stored with it, and a reader of its data set's batches."""
from typing import Optional

import torch

from . import checkpoint
from .config import load_config
from .data import read_batch
from .models import build_model
from .ncp.estimators import LogPartitionEstimate
from .ncp.flat import CHECKPOINT_KIND as FLAT_KIND
from .ncp.flat import FlatNCP
from .ncp.grouped import GroupedNCP
from .run_dir import RunDir, RunDirError


def load_run(run_dir: str, device: torch.device):
    """(config, VAE in eval mode) of a stage-1 run (its best checkpoint, EMA weights when present)."""
    run = RunDir(run_dir)
    config = load_config(run.require_config())
    path = run.stage1_checkpoint()
    state = checkpoint.load(path, map_location=device)
    vae = build_model(config.model).to(device)
    checkpoint.load_weights(vae, state["ema"] if state.get("ema") is not None else state["model"], path)
    return config, vae.eval()


def load_ncp(run_dir: str, vae):
    """The run's stage-2 NCP over vae: a FlatNCP (--ncp-base gmm) or a GroupedNCP
    (RunDirError where stage 2 has not run)."""
    path = RunDir(run_dir).require_ncp_checkpoint()
    state = checkpoint.load(path, map_location=next(vae.parameters()).device)
    if state.get("kind") == FLAT_KIND:
        return FlatNCP.from_checkpoint(vae, state)
    return GroupedNCP.from_checkpoint(vae, state)


def stored_log_partition(ncp, run_dir: str) -> LogPartitionEstimate:
    """The log Z estimate stage 2 stored with the run's NCP."""
    estimate = ncp.stored_log_partition
    if estimate is None:
        raise RunDirError(f"{run_dir}: its NCP checkpoint holds no log Z estimate; pass a log Z sample count "
                          "to estimate one")
    return estimate


def image_reader(split, likelihood: str, device: torch.device, generator: Optional[torch.Generator]):
    """indices -> a batch on device, dynamically binarised for binary likelihoods."""
    return lambda indices: read_batch(split, indices, likelihood, device, generator)
