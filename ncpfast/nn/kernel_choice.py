"""Which forward a residual cell runs: ncpfast's fused kernels or the eager torch ops.

A FusableModule's `kernels` attribute holds one of KERNEL_CHOICES;
set_cell_kernels sets it for a whole model, and fused_kernels_apply decides per
input. This module knows no cell class, so the cells (ncpfast.nn.cells) and
their fused forwards (ncpfast.nn.fused_cells) both import it without importing
each other.
"""
import torch
import torch.nn as nn

KERNEL_CHOICES = ("auto", "fused", "torch")


class FusableModule(nn.Module):
    """A module whose forward can run through ncpfast's fused kernels.

    kernels: "auto" (fused where the extension has the backend), "fused" or
    "torch" (the eager forward, also the reference). Set it for a whole model
    with set_cell_kernels(); it is not part of the state dict.
    """
    kernels = "auto"


def fused_kernels_apply(mode: str, x: torch.Tensor) -> bool:
    """Whether a cell set to `mode` runs fused on input x. "auto" is fused
    wherever the extension has kernels for x's device and dtype; "fused" raises
    where it has none."""
    if mode == "torch":
        return False
    from .. import _extension  # here, so that the eager cells import without the compiled extension
    supported = _extension.has_backend(x.device) and (
        x.dtype in (torch.float32, torch.float64) or x.is_cuda)
    if mode == "fused" and not supported:
        raise RuntimeError(
            f"kernels='fused' but ncpfast has no fused cell kernels for {x.dtype} on {x.device.type} "
            f"(build backends: {_extension.build_info()['backends']}); use kernels='auto' or 'torch'")
    return supported


def set_cell_kernels(model: nn.Module, kernels: str) -> nn.Module:
    """Sets every FusableModule of model (its residual cells) to kernels ("auto", "fused" or "torch")."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
    for module in model.modules():
        if isinstance(module, FusableModule):
            module.kernels = kernels
    return model
