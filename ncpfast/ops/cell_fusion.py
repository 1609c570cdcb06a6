"""Fused residual-cell ops (csrc/ops/cell_fusion): Python entry points, fake
(meta) implementations for torch.compile, and autograd formulas.

The batch norm enters every op as four per-channel tensors (mean, invstd,
weight, bias), so the same op serves training (batch statistics, which are
differentiable functions of the activations: their gradients flow back through
plane_moments) and evaluation (running statistics, constants). Kernels return
per-(image, channel) reductions [N, C]; the autograd formulas here turn them
into parameter gradients, so one formula (_affine_grads) serves every op.
"""

import torch

from .. import _extension  # noqa: F401  (loads the operator library)
from .layout import accumulation_dtype, contiguous_like

__all__ = ["plane_moments", "bn_swish_given_stats", "bn_swish_batch_stats", "bn_swish_dwconv", "bn_gate_residual"]

Tensor = torch.Tensor


def plane_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sum and sum of squares of every (image, channel) plane of x [N, C, H, W]:
    two [N, C] tensors, float32 (float64 for float64 x), accumulated in float64
    on the CPU and float32 on CUDA."""
    return torch.ops.ncpfast.plane_moments(x)


def bn_swish_given_stats(x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """swish((x - mean) * invstd * weight + bias), per channel, in one pass.
    The backward recomputes the normalised input from x instead of storing it."""
    return torch.ops.ncpfast.bn_swish_given_stats(x, mean, invstd, weight, bias)


def bn_swish_batch_stats(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode batch norm (statistics of this batch) followed by Swish:
    (y, mean, var), mean and biased var per channel, as plane_moments + bn_swish_given_stats
    would give. mean and var are statistics (for the running averages) and are
    not differentiable; the gradient through them reaches x inside this op's
    backward, which needs one full-size pass fewer than the two ops'."""
    return torch.ops.ncpfast.bn_swish_batch_stats(x, weight, bias, float(eps))


def bn_swish_dwconv(x: Tensor, mean: Tensor, invstd: Tensor, bn_weight: Tensor, bn_bias: Tensor,
                    conv_weight: Tensor, conv_bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """out = depthwise_conv(swish(BN(x)), conv_weight [C, 1, K, K], 'same' padding) + conv_bias,
    with BN(x) computed as x is read (never stored), plus out's plane_moments
    (what the next batch norm needs) from the same pass."""
    return torch.ops.ncpfast.bn_swish_dwconv(x, mean, invstd, bn_weight, bn_bias, conv_weight, conv_bias)


def bn_gate_residual(h: Tensor, skip: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor, bias: Tensor,
                     gate: Tensor, residual_scale: float) -> Tensor:
    """skip + residual_scale * gate[n, c] * BN(h): a cell's tail (its last batch
    norm, the squeeze-excitation gate [N, C] and the scaled residual) in one pass."""
    return torch.ops.ncpfast.bn_gate_residual(h, skip, mean, invstd, weight, bias, gate, float(residual_scale))


# ---------------------------------------------------------------- fake impls

def _planes(x: Tensor) -> Tensor:
    return x.new_empty((x.shape[0], x.shape[1]), dtype=accumulation_dtype(x))


@torch.library.register_fake("ncpfast::plane_moments")
def _(x):
    return _planes(x), _planes(x)


@torch.library.register_fake("ncpfast::plane_moments_backward")
def _(x, grad_sum, grad_sumsq):
    return torch.empty_like(x)


@torch.library.register_fake("ncpfast::bn_swish_given_stats")
def _(x, mean, invstd, weight, bias):
    return torch.empty_like(x)


@torch.library.register_fake("ncpfast::bn_swish_given_stats_backward")
def _(grad_out, x, mean, invstd, weight, bias):
    return torch.empty_like(x), _planes(x), _planes(x)


@torch.library.register_fake("ncpfast::bn_swish_batch_stats")
def _(x, weight, bias, eps):
    return torch.empty_like(x), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


@torch.library.register_fake("ncpfast::bn_swish_batch_stats_backward")
def _(grad_y, x, mean, invstd, weight, bias):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


@torch.library.register_fake("ncpfast::bn_swish_dwconv")
def _(x, mean, invstd, bn_weight, bn_bias, conv_weight, conv_bias):
    return torch.empty_like(x), _planes(x), _planes(x)


@torch.library.register_fake("ncpfast::bn_swish_dwconv_backward")
def _(grad_out, grad_sum, grad_sumsq, out, x, mean, invstd, bn_weight, bn_bias, conv_weight):
    N, C = x.shape[:2]
    K = conv_weight.shape[-1]
    return (torch.empty_like(x), _planes(x), _planes(x),
            x.new_empty((N, C, K, K), dtype=mean.dtype), _planes(x))


@torch.library.register_fake("ncpfast::bn_gate_residual")
def _(h, skip, mean, invstd, weight, bias, gate, residual_scale):
    return torch.empty_like(h)


@torch.library.register_fake("ncpfast::bn_gate_residual_backward")
def _(grad_out, h, mean, invstd, weight, gate, residual_scale):
    return torch.empty_like(h), _planes(h), _planes(h)


# ------------------------------------------------------------------ autograd

def _affine_grads(sum_grad: Tensor, sum_grad_centered: Tensor, invstd: Tensor, weight: Tensor):
    """Gradients of u = (x - mean) * invstd * weight + bias with respect to
    (mean, invstd, weight, bias), from the per-plane sums of g_u and of
    g_u (x - mean) (both [N, C])."""
    s1, s2 = sum_grad.sum(0), sum_grad_centered.sum(0)
    return -invstd * weight * s1, weight * s2, invstd * s2, s1


def _plane_moments_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (see the backward)
    ctx.save_for_backward(inputs[0])


def _plane_moments_backward(ctx, grad_sum, grad_sumsq):
    (x,) = ctx.saved_tensors
    if grad_sumsq is None and grad_sum is not None:
        # Only the sums are used (e.g. a mean pool): the gradient is constant
        # over each plane, so a broadcast view stands for it instead of a new
        # full-size tensor that autograd would then have to add.
        return grad_sum.to(x.dtype)[:, :, None, None].expand(x.shape)
    grad_sum = _planes(x).zero_() if grad_sum is None else grad_sum.contiguous()
    grad_sumsq = _planes(x).zero_() if grad_sumsq is None else grad_sumsq.contiguous()
    return torch.ops.ncpfast.plane_moments_backward(x, grad_sum, grad_sumsq)


torch.library.register_autograd("ncpfast::plane_moments", _plane_moments_backward,
                                setup_context=_plane_moments_setup)


def _bn_swish_given_stats_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _bn_swish_given_stats_backward(ctx, grad_out):
    x, mean, invstd, weight, bias = ctx.saved_tensors
    grad_x, s1, s2 = torch.ops.ncpfast.bn_swish_given_stats_backward(contiguous_like(grad_out, x), x, mean, invstd,
                                                                      weight, bias)
    return (grad_x, *_affine_grads(s1, s2, invstd, weight))


torch.library.register_autograd("ncpfast::bn_swish_given_stats", _bn_swish_given_stats_backward,
                                setup_context=_bn_swish_given_stats_setup)


def _bn_swish_batch_stats_setup(ctx, inputs, output):
    x, weight, bias, eps = inputs
    _, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.eps = eps


def _bn_swish_batch_stats_backward(ctx, grad_y, _grad_mean, _grad_var):
    x, weight, bias, mean, var = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = torch.ops.ncpfast.bn_swish_batch_stats_backward(
        contiguous_like(grad_y, x), x, mean, torch.rsqrt(var + ctx.eps), weight, bias)
    return grad_x, grad_weight, grad_bias, None


torch.library.register_autograd("ncpfast::bn_swish_batch_stats", _bn_swish_batch_stats_backward,
                                setup_context=_bn_swish_batch_stats_setup)


def _dwconv_setup(ctx, inputs, output):
    ctx.save_for_backward(output[0], *inputs[:-1])


def _dwconv_backward(ctx, grad_out, grad_sum, grad_sumsq):
    out, x, mean, invstd, bn_weight, bn_bias, conv_weight = ctx.saved_tensors
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
    grad_sum = _planes(x).zero_() if grad_sum is None else grad_sum.contiguous()
    grad_sumsq = _planes(x).zero_() if grad_sumsq is None else grad_sumsq.contiguous()
    grad_x, s1, s2, grad_w, grad_b = torch.ops.ncpfast.bn_swish_dwconv_backward(
        grad_out, grad_sum, grad_sumsq, out, x, mean, invstd, bn_weight, bn_bias, conv_weight)
    return (grad_x, *_affine_grads(s1, s2, invstd, bn_weight), grad_w.sum(0).unsqueeze(1), grad_b.sum(0))


torch.library.register_autograd("ncpfast::bn_swish_dwconv", _dwconv_backward, setup_context=_dwconv_setup)


def _gate_setup(ctx, inputs, output):
    h, _, mean, invstd, weight, bias, gate, residual_scale = inputs
    ctx.save_for_backward(h, mean, invstd, weight, bias, gate)
    ctx.residual_scale = residual_scale


def _gate_backward(ctx, grad_out):
    h, mean, invstd, weight, bias, gate = ctx.saved_tensors
    rs = ctx.residual_scale
    grad_out = contiguous_like(grad_out, h)
    grad_h, t1, t2 = torch.ops.ncpfast.bn_gate_residual_backward(grad_out, h, mean, invstd, weight, gate, rs)
    # The BN output v receives rs * gate * grad_out; the gate receives rs * sum(grad_out * v).
    param_grads = _affine_grads(rs * gate * t1, rs * gate * t2, invstd, weight)
    grad_gate = rs * (invstd * weight * t2 + bias * t1)
    return (grad_h, grad_out, *param_grads, grad_gate, None)


torch.library.register_autograd("ncpfast::bn_gate_residual", _gate_backward, setup_context=_gate_setup)
