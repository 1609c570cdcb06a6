"""Pure-PyTorch twins of ncpfast's fused ops: same signatures, same errors.

They are the reference in the tests and the baseline in the benchmarks, and
they run anywhere torch runs. Their random streams are torch's own, so for a
given generator they draw different (equally distributed) indices than the
fused ops.
"""
from typing import Optional

import torch

from ._sir_resample_checks import bad_row_message, check_generator, check_method_and_count
from .layout import accumulation_dtype

__all__ = ["sir_resample", "plane_moments", "bn_swish_given_stats", "bn_swish_batch_stats", "bn_swish_dwconv",
           "bn_gate_residual",
           "mlp_log_ratio"]

_WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_sir_tensors(log_weights, proposals, num_samples):
    if log_weights.dim() != 2:
        raise ValueError(f"sir_resample: log_weights must be 2-D [B, M], got shape {list(log_weights.shape)}")
    if log_weights.dtype not in _WEIGHT_DTYPES:
        raise TypeError(f"sir_resample: log_weights must be float32, float16, bfloat16 or float64, "
                        f"got {log_weights.dtype}")
    if log_weights.shape[1] == 0:
        raise ValueError("sir_resample: log_weights has M = 0 proposals per row; need at least one")
    if proposals.dim() < 2:
        raise ValueError(f"sir_resample: proposals must be [B, M, ...], got shape {list(proposals.shape)}")
    if tuple(proposals.shape[:2]) != tuple(log_weights.shape):
        raise ValueError(f"sir_resample: proposals {list(proposals.shape)} must start with "
                         f"log_weights' [B, M] = {list(log_weights.shape)}")
    if not proposals.dtype.is_floating_point:
        raise TypeError(f"sir_resample: proposals must have a floating dtype, got {proposals.dtype}")
    if num_samples < 1:
        raise ValueError(f"sir_resample: num_samples must be >= 1, got {num_samples}")
    if proposals.device != log_weights.device:
        raise ValueError(f"sir_resample: proposals are on {proposals.device} "
                         f"but log_weights are on {log_weights.device}")


def sir_resample(
    log_weights: torch.Tensor,
    proposals: torch.Tensor,
    num_samples: int = 1,
    *,
    method: str = "multinomial",
    generator: Optional[torch.Generator] = None,
    return_log_normalizer: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Twin of ncpfast.ops.sir_resample: softmax -> torch.multinomial -> gather."""
    check_method_and_count(method, num_samples)
    check_generator(generator, log_weights.device)
    _check_sir_tensors(log_weights, proposals, num_samples)
    weights = log_weights.float()
    log_normalizer = torch.logsumexp(weights, dim=1)
    bad = ~torch.isfinite(log_normalizer)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(bad_row_message(row, float(log_normalizer[row])))
    probs = torch.softmax(weights, dim=1)
    B, M = weights.shape
    if method == "multinomial":
        indices = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
    else:
        u0 = torch.rand(B, 1, device=weights.device, generator=generator)
        points = (u0 + torch.arange(num_samples, device=weights.device)) / num_samples
        cdf = probs.cumsum(dim=1)
        indices = torch.searchsorted(cdf, points * cdf[:, -1:], right=True).clamp_(max=M - 1)
    trailing = proposals.shape[2:]
    gather_index = indices.view(B, num_samples, *([1] * len(trailing))).expand(B, num_samples, *trailing)
    samples = proposals.gather(1, gather_index)
    if return_log_normalizer:
        return samples, indices, log_normalizer
    return samples, indices


# ------------------------------------------------------------------ cell ops
# Twins of ncpfast.ops.cell_fusion: eager PyTorch, differentiable by autograd.

def _per_channel(t):
    return t[:, None, None]


def plane_moments(x):
    xf = x.to(accumulation_dtype(x))
    return xf.sum((2, 3)), (xf * xf).sum((2, 3))


def bn_swish_given_stats(x, mean, invstd, weight, bias):
    u = (x.to(mean.dtype) - _per_channel(mean)) * _per_channel(invstd * weight) + _per_channel(bias)
    return torch.nn.functional.silu(u).to(x.dtype)


def bn_swish_batch_stats(x, weight, bias, eps):
    # torch's own training-mode batch norm (no running statistics), then SiLU.
    u, mean, invstd = torch.native_batch_norm(x.to(weight.dtype), weight, bias, None, None, True, 0.0, eps)
    return torch.nn.functional.silu(u).to(x.dtype), mean.detach(), invstd.detach().pow(-2) - eps


def bn_swish_dwconv(x, mean, invstd, bn_weight, bn_bias, conv_weight, conv_bias):
    a = bn_swish_given_stats(x, mean, invstd, bn_weight, bn_bias).to(mean.dtype)
    out = torch.nn.functional.conv2d(a, conv_weight, conv_bias, padding=conv_weight.shape[-1] // 2,
                                     groups=x.shape[1])
    return (out.to(x.dtype), *plane_moments(out))


def bn_gate_residual(h, skip, mean, invstd, weight, bias, gate, residual_scale):
    v = (h.to(mean.dtype) - _per_channel(mean)) * _per_channel(invstd * weight) + _per_channel(bias)
    return (skip.to(mean.dtype) + residual_scale * gate[:, :, None, None] * v).to(h.dtype)


# ------------------------------------------------------------ mlp_log_ratio

def mlp_log_ratio(z, weights, biases):
    """Twin of ncpfast.ops.mlp_log_ratio: the layers one at a time, then logsumexp."""
    h = z.float()
    for index, (w, b) in enumerate(zip(weights, biases)):
        h = torch.nn.functional.linear(h, w, b)
        if index + 1 < len(weights):
            h = torch.nn.functional.silu(h)
    log_ratio = h.squeeze(-1)
    return log_ratio, torch.logsumexp(log_ratio, dim=1)
