"""ncpfast's fused operators.

Every op here has a pure-PyTorch twin with the same signature in
ncpfast.ops.reference: the reference in tests and the baseline in benchmarks.
The twins need no compiled extension; the fused ops do, and without it any
use of one raises an ImportError that says how to build it (never a silent
fall-back to the twin).

Modules are named like their C++ folders (csrc/ops/<name>): sir_resample,
mlp_log_ratio, cell_fusion.
"""
from . import reference

FUSED_OPS = ("SIR_METHODS", "sir_resample", "plane_moments", "bn_swish_given_stats", "bn_swish_batch_stats",
             "bn_swish_dwconv", "bn_gate_residual", "mlp_log_ratio", "mlp_parameters")
__all__ = [*FUSED_OPS, "reference"]

try:
    from .. import _extension  # noqa: F401  (loads the operator library)
except ImportError as error:
    _missing_extension = error
else:
    _missing_extension = None
    from .cell_fusion import (
        bn_gate_residual,
        bn_swish_batch_stats,
        bn_swish_dwconv,
        bn_swish_given_stats,
        plane_moments,
    )
    from .mlp_log_ratio import mlp_log_ratio, mlp_parameters
    from .sir_resample import SIR_METHODS, sir_resample


def __getattr__(name):
    if name in FUSED_OPS and _missing_extension is not None:
        raise ImportError(f"ncpfast.ops.{name} needs the compiled extension: {_missing_extension}") \
            from _missing_extension
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
