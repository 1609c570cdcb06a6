"""Stage 1: training the VAE (the loop, checkpoints, logging)."""
from .trainer import Trainer, TrainingDiverged

__all__ = ["Trainer", "TrainingDiverged"]
