"""SIR (sampling-importance-resampling) resample, fused: ncpfast::sir_resample."""
from typing import Optional

import torch

from .. import _extension  # noqa: F401  (loads the operator library)
from ._sir_resample_checks import SIR_METHODS, check_generator, check_method_and_count

__all__ = ["SIR_METHODS", "sir_resample"]


def sir_resample(
    log_weights: torch.Tensor,
    proposals: torch.Tensor,
    num_samples: int = 1,
    *,
    method: str = "multinomial",
    generator: Optional[torch.Generator] = None,
    return_log_normalizer: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Resample proposals in proportion to softmax(log_weights), per row.

    Args:
        log_weights: [B, M] unnormalised log-weights (float32, float16, bfloat16
            or float64; arithmetic in float32). -inf marks a proposal that must
            never be drawn.
        proposals: [B, M, ...] any trailing shape, any float dtype.
        num_samples: S >= 1 draws per row, with replacement.
        method: "multinomial" (independent draws) or "systematic" (one uniform
            per row, S evenly spaced points: lower variance, same expectation;
            each index is drawn floor(S p) or ceil(S p) times).
        generator: a torch.Generator on the op's device type. The op takes one
            64-bit seed from it per call (so the generator advances and the same
            generator state gives the same indices), and that seed keys the
            Philox4x32-10 stream documented in csrc/core/philox.h. CPU and CUDA
            use the same stream; their indices agree except where float
            summation order breaks a near-tie.
        return_log_normalizer: also return logsumexp(log_weights) per row
            ([B], float32), computed in the same pass.

    Returns:
        (samples [B, S, ...], indices [B, S] int64), plus log_normalizer when
        asked. Gradients flow from samples to proposals (a scatter-add);
        log_weights get none (resampling is not differentiable in them).

    Raises:
        ValueError naming the row when a row has only -inf weights or holds NaN
        or +inf; ValueError/TypeError for bad shapes, dtypes, devices, M = 0 or
        num_samples < 1. On CUDA that row check reads B flags back to the host
        (a synchronisation); while a CUDA graph is being captured it is skipped
        (the op stays capturable), and a bad row shows instead as a NaN or -inf
        log_normalizer with indices 0 and unwritten samples.
    """
    check_method_and_count(method, num_samples)
    check_generator(generator, log_weights.device)
    seed = torch.randint(-(2**62), 2**62, (1,), dtype=torch.int64, device=log_weights.device,
                         generator=generator)
    samples, indices, log_normalizer = torch.ops.ncpfast.sir_resample(
        log_weights.contiguous(), proposals.contiguous(), num_samples, method == "systematic", seed)
    if return_log_normalizer:
        return samples, indices, log_normalizer
    return samples, indices


@torch.library.register_fake("ncpfast::sir_resample")
def _sir_resample_fake(log_weights, proposals, num_samples, systematic, seed):
    torch._check(log_weights.dim() == 2, lambda: "sir_resample: log_weights must be 2-D [B, M]")
    torch._check(proposals.dim() >= 2, lambda: "sir_resample: proposals must be [B, M, ...]")
    B = log_weights.shape[0]
    samples = proposals.new_empty((B, num_samples, *proposals.shape[2:]))
    indices = log_weights.new_empty((B, num_samples), dtype=torch.int64)
    log_normalizer = log_weights.new_empty((B,), dtype=torch.float32)
    return samples, indices, log_normalizer


def _sir_setup_context(ctx, inputs, output):
    _, proposals, _, _, _ = inputs
    _, indices, _ = output
    ctx.save_for_backward(indices)
    ctx.proposals_shape = proposals.shape


def _sir_backward(ctx, grad_samples, grad_indices, grad_log_normalizer):
    (indices,) = ctx.saved_tensors
    grad_proposals = None
    if ctx.needs_input_grad[1] and grad_samples is not None:
        trailing = grad_samples.shape[2:]
        index = indices.view(*indices.shape, *([1] * len(trailing))).expand_as(grad_samples)
        grad_proposals = grad_samples.new_zeros(ctx.proposals_shape).scatter_add(1, index, grad_samples)
    return None, grad_proposals, None, None, None


torch.library.register_autograd("ncpfast::sir_resample", _sir_backward,
                                setup_context=_sir_setup_context)
