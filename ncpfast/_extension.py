"""Loads the compiled extension ncpfast._C, or explains how to build it.

ncpfast never falls back silently to slow code: without the extension the
import fails with the command that builds it.
"""
import torch

try:
    from . import _C  # noqa: F401  (registers the ncpfast:: operators)
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "ncpfast's compiled extension (ncpfast._C) is not built or does not load: "
        f"{error}.\nBuild it from the repository root with\n"
        "    pip install --no-build-isolation -e .\n"
        "(NCPFAST_CUDA=0 to skip the CUDA kernels; see README.md, 'Building')."
    ) from error


def build_info() -> dict:
    """What this build of ncpfast holds.

    Keys: backends (tuple of "cpu"/"cuda"), cuda (bool), cuda_arch_list,
    cuda_version, torch_version (compiled against), openmp, compiler, and
    runtime_torch / cuda_available for the running process.
    """
    info = dict(_C.build_info())
    info["runtime_torch"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    return info


# Fixed at build time; read once, since every fused cell's forward asks.
_BACKENDS = frozenset(_C.build_info()["backends"])


def has_backend(device: torch.device) -> bool:
    """True when the extension has kernels for this device type."""
    return torch.device(device).type in _BACKENDS
