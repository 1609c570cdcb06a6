"""Stage 1: training the VAE (config and presets, the loop, checkpoints, logging)."""
from .config import PRESETS, TrainConfig, config_from_args
from .trainer import Trainer, TrainingDiverged

__all__ = ["PRESETS", "TrainConfig", "config_from_args", "Trainer", "TrainingDiverged"]
