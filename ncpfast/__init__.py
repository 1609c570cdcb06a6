"""ncpfast: noise contrastive priors for VAEs (NCP-VAE), with fused C++/CUDA kernels.

Ops live in ncpfast.ops (each with a pure-PyTorch twin in ncpfast.ops.reference).
"""
from . import ops
from ._version import __version__

__all__ = ["build_info", "has_backend", "cpu_target", "set_cpu_target", "supported_cpu_targets",
           "ops", "NCPPrior", "__version__"]

_EXTENSION_NAMES = ("build_info", "has_backend", "cpu_target", "set_cpu_target", "supported_cpu_targets")


def __getattr__(name):
    # Imported on first use, so that the twins (ncpfast.ops.reference) import
    # without the compiled extension; these names need it and say so.
    if name in _EXTENSION_NAMES:
        from . import _extension
        return getattr(_extension, name)
    if name == "NCPPrior":
        from .ncp import NCPPrior
        return NCPPrior
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
