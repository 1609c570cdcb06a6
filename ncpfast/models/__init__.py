"""The VAEs: the NVAE-style hierarchical model and the single-group ablation models.

Every model shares one contract (see base.LatentVAE), which the training loop,
the NLL evaluation and the NCP stage rely on.
"""
from .base import GroupOutput, LatentVAE
from .factory import build_model
from .nvae import HierarchicalVAE, NVAEConfig
from .single import ConvVAE, MLPVAE

__all__ = ["GroupOutput", "LatentVAE", "build_model", "HierarchicalVAE", "NVAEConfig", "ConvVAE", "MLPVAE"]
