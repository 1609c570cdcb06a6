"""Loads the compiled extension ncpfast._C, or explains how to build it.

ncpfast never falls back silently to slow code: without the extension the
import fails with the command that builds it.
"""
import os

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
    runtime_torch / cuda_available / cpu_target for the running process.
    """
    info = dict(_C.build_info())
    info["runtime_torch"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    info["cpu_target"] = cpu_target()
    return info


# The CPU kernels' loops are compiled for several x86-64 targets; each call runs
# the widest this CPU supports unless one is pinned (to test every copy on one
# machine, or to reproduce another machine's numbers).
CPU_TARGETS = ("x86-64-v4", "x86-64-v3", "baseline")
CPU_TARGET_VARIABLE = "NCPFAST_CPU_TARGET"


def cpu_target() -> str:
    """The target whose compiled copy of the CPU loops runs now."""
    return _C.cpu_target()


def supported_cpu_targets() -> tuple:
    """The targets this CPU runs, widest first (only "baseline" off x86-64)."""
    detected = _C.detected_cpu_target()
    return CPU_TARGETS[CPU_TARGETS.index(detected):]


def set_cpu_target(target) -> None:
    """Runs the CPU loops compiled for `target` (one of CPU_TARGETS, at most the
    widest this CPU runs), or for the widest again with None. Process-wide."""
    if target is not None and target not in CPU_TARGETS:
        raise ValueError(f"cpu target must be one of {', '.join(CPU_TARGETS)} or None, got {target!r}")
    if target is not None and target not in supported_cpu_targets():
        raise ValueError(f"this CPU runs the cpu targets {', '.join(supported_cpu_targets())}, not {target!r}")
    _C.set_cpu_target(target or "")


def _pin_from_environment():
    target = os.environ.get(CPU_TARGET_VARIABLE, "").strip()
    if not target:
        return
    try:
        set_cpu_target(target)
    except ValueError as error:
        raise ValueError(f"{CPU_TARGET_VARIABLE}={target!r}: {error}") from None


_pin_from_environment()


# Fixed at build time; read once, since every fused cell's forward asks.
_BACKENDS = frozenset(_C.build_info()["backends"])


def has_backend(device: torch.device) -> bool:
    """True when the extension has kernels for this device type."""
    return torch.device(device).type in _BACKENDS
