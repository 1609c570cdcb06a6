"""Dtype and memory-layout rules shared by the fused cell ops and their twins.

Torch-only (no compiled extension), so that ncpfast.ops.reference imports and
runs without ncpfast._C.
"""
import torch

Tensor = torch.Tensor


def accumulation_dtype(x: Tensor) -> torch.dtype:
    """The dtype of x's batch-norm parameters and reductions in these ops:
    float64 for float64 activations, float32 otherwise (half precision included)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def memory_format_of(x: Tensor) -> torch.memory_format:
    """The layout these ops read x in: channels_last where x is NHWC-contiguous
    and not NCHW-contiguous (the CPU kernels take both; CUDA and the depthwise
    conv take NCHW), contiguous_format otherwise."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def contiguous_like(t: Tensor, x: Tensor) -> Tensor:
    """t, contiguous in x's layout (memory_format_of): what an op that takes
    both t and x expects, e.g. an incoming gradient and the saved input."""
    return t.contiguous(memory_format=memory_format_of(x))
