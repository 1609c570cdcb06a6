"""ncpfast's fused operators.

Every op here has a pure-PyTorch twin with the same signature in
ncpfast.ops.reference: the reference in tests and the baseline in benchmarks.
"""
from .sir import SIR_METHODS, sir_resample
from .cell import batch_norm_swish, bn_gate_residual, bn_swish, dwconv_bn_swish, plane_moments
from .mlp import mlp_log_ratio, mlp_parameters
from . import reference

__all__ = ["SIR_METHODS", "sir_resample", "plane_moments", "bn_swish", "batch_norm_swish", "dwconv_bn_swish",
           "bn_gate_residual", "mlp_log_ratio", "mlp_parameters", "reference"]
