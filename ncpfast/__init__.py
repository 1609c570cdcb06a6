"""ncpfast: noise contrastive priors for VAEs (NCP-VAE), with fused C++/CUDA kernels.

Ops live in ncpfast.ops (each with a pure-PyTorch twin in ncpfast.ops.reference).
"""
from ._extension import build_info, has_backend
from . import ops
from .ncp import NCPPrior

__version__ = "0.1.0"
__all__ = ["build_info", "has_backend", "ops", "NCPPrior", "__version__"]
