"""The flat-latent NCP classifier evaluated on many proposals, fused:
ncpfast::mlp_log_ratio.

Forward only: the samplers and estimators that use it (SIR weights, log Z,
NLL) need no gradient. Langevin differentiates log r(z) and therefore runs the
classifier module itself (the twin path), which autograd differentiates.
"""
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn

from .. import _extension  # noqa: F401  (loads the operator library)

__all__ = ["mlp_log_ratio", "mlp_parameters"]


def mlp_log_ratio(z: torch.Tensor, weights: Sequence[torch.Tensor],
                  biases: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """log r for every proposal and each row's logsumexp, in one op.

    Args:
        z: [B, M, D] proposals, float32 (float16/bfloat16 on CUDA).
        weights, biases: the MLP's linear layers in order, weights[l] [out, in]
            and biases[l] [out], float32; SiLU between layers; the last layer
            has one output (the logit).
    Returns:
        (log_ratio [B, M], row_logsumexp [B]), float32. No [B*M, hidden]
        activation is materialised: tiles of proposals go through the whole MLP.
    """
    return torch.ops.ncpfast.mlp_log_ratio(z.contiguous(), list(weights), list(biases))


def mlp_parameters(classifier: nn.Module) -> Optional[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """(weights, biases) when classifier is the MLP shape mlp_log_ratio computes
    (Linear, SiLU, Linear, SiLU, ..., Linear -> 1, every Linear with a bias);
    None otherwise (the caller then runs the module)."""
    if not isinstance(classifier, nn.Sequential) or len(classifier) < 3 or len(classifier) % 2 == 0:
        return None
    linears = list(classifier[0::2])
    activations = list(classifier[1::2])
    if not all(isinstance(m, nn.Linear) and m.bias is not None for m in linears):
        return None
    if not all(isinstance(m, nn.SiLU) for m in activations) or linears[-1].out_features != 1:
        return None
    return [m.weight.detach().float().contiguous() for m in linears], \
           [m.bias.detach().float().contiguous() for m in linears]


@torch.library.register_fake("ncpfast::mlp_log_ratio")
def _(z, weights, biases):
    torch._check(z.dim() == 3, lambda: "mlp_log_ratio: z must be 3-D [B, M, D]")
    B, M = z.shape[0], z.shape[1]
    return z.new_empty((B, M), dtype=torch.float32), z.new_empty((B,), dtype=torch.float32)
