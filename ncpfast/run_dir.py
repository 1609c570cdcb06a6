"""The layout of a run directory, in one place.

    config.json              the resolved training configuration
    metrics.json             stage 1's metrics, then the "ncp" and "evaluation" sections
    checkpoints/latest.pt    stage 1 at its last step boundary (what --resume continues; at the
                             end, the final weights that stage 2 and the evaluation read)
    checkpoints/ncp.pt       stage 2: the NCP classifiers and their log Z
    tensorboard/             TensorBoard event files of both stages
    samples/epoch_NNNN.png   stage 1's sample grids (samples/final.png at the end)
    samples.png              the latest grid; after stage 2, base | NCP side by side
    samples_<method>.png     where python -m ncpfast.sample writes by default
"""
import json
import os
from typing import Optional

from .atomic_files import write_json_atomic


class RunDirError(ValueError):
    """A run directory lacks what a command needs."""


class RunDir:
    """The paths of one run directory, and the checks that it holds what a command needs."""

    CONFIG = "config.json"
    METRICS = "metrics.json"
    CHECKPOINTS = "checkpoints"
    LATEST = "latest.pt"
    NCP = "ncp.pt"
    TENSORBOARD = "tensorboard"
    SAMPLES = "samples"
    SAMPLE_GRID = "samples.png"

    def __init__(self, path):
        self.path = os.fspath(path)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    def _join(self, *parts) -> str:
        return os.path.join(self.path, *parts)

    # --- the files -------------------------------------------------------------------------

    @property
    def config_path(self) -> str:
        return self._join(self.CONFIG)

    @property
    def metrics_path(self) -> str:
        return self._join(self.METRICS)

    @property
    def checkpoints_dir(self) -> str:
        return self._join(self.CHECKPOINTS)

    @property
    def latest_checkpoint(self) -> str:
        return self._join(self.CHECKPOINTS, self.LATEST)

    @property
    def ncp_checkpoint(self) -> str:
        return self._join(self.CHECKPOINTS, self.NCP)

    @property
    def tensorboard_dir(self) -> str:
        return self._join(self.TENSORBOARD)

    def sample_grid_at(self, name: str) -> str:
        """samples/<name>: one of stage 1's sample grids."""
        return self._join(self.SAMPLES, name)

    @property
    def sample_grid(self) -> str:
        return self._join(self.SAMPLE_GRID)

    def sampler_output(self, method: str) -> str:
        """samples_<method>.png: the grid python -m ncpfast.sample writes by default."""
        return self._join(f"samples_{method}.png")

    # --- what a command needs ----------------------------------------------------------------

    def is_run_dir(self) -> bool:
        """Whether stage 1 has started here (config.json is written first)."""
        return os.path.isfile(self.config_path)

    def require_config(self) -> str:
        """config.json's path; RunDirError where there is none."""
        if not self.is_run_dir():
            raise RunDirError(f"{self.path} is not a run directory (no {self.CONFIG}); "
                              "train one with python -m ncpfast.train")
        return self.config_path

    def stage1_checkpoint(self) -> str:
        """The checkpoint a trained VAE is read from: the final weights. No checkpoint is
        chosen by a test score, which would bias the test numbers reported on it.
        RunDirError where stage 1 has written none."""
        if not os.path.isfile(self.latest_checkpoint):
            raise RunDirError(f"{self.path} has no stage-1 checkpoint ({self.latest_checkpoint} is missing); "
                              f"train stage 1 with python -m ncpfast.train --run-dir {self.path}")
        return self.latest_checkpoint

    def unfinished_stage1(self) -> Optional[str]:
        """Why stage 1 of this run is not finished (its metrics.json's status and step), or
        None when it is complete or says nothing."""
        metrics = self.read_metrics()
        status = metrics.get("status")
        if status in (None, "complete"):
            return None
        return f"stage 1 is {status} (step {metrics.get('step')} of {metrics.get('total_steps')})"

    def require_ncp_checkpoint(self) -> str:
        """checkpoints/ncp.pt's path; RunDirError where stage 2 has not run."""
        if not os.path.isfile(self.ncp_checkpoint):
            raise RunDirError(f"{self.path} has no NCP stage ({self.ncp_checkpoint} is missing); train it with "
                              f"python -m ncpfast.train --stage 2 --from {self.path}")
        return self.ncp_checkpoint

    # --- metrics.json -------------------------------------------------------------------------

    def write_metrics(self, metrics: dict) -> None:
        write_json_atomic(metrics, self.metrics_path)

    def read_metrics(self) -> dict:
        """metrics.json's contents ({} when there is none yet)."""
        if not os.path.isfile(self.metrics_path):
            return {}
        with open(self.metrics_path) as f:
            return json.load(f)

    def merge_metrics(self, key: str, value) -> None:
        """Adds one section to metrics.json (created when missing)."""
        metrics = self.read_metrics()
        metrics[key] = value
        self.write_metrics(metrics)
