"""The residual cells' forwards through ncpfast's fused ops (ncpfast.ops.cell_fusion).

Same modules, same parameters, same buffers as the eager forwards in
ncpfast/nn/cells.py: these functions only change how a cell is computed.
    generative cell: [BN folded into the 1x1 conv] -> moments -> bn_swish_dwconv
                     (+ moments of its output) -> bn_swish_given_stats -> 1x1 conv -> moments
                     -> SE on the moments -> bn_gate_residual
    encoder cell:    bn_swish_batch_stats -> 3x3 conv -> bn_swish_batch_stats -> 3x3 conv
                     -> moments -> SE -> bn_gate_residual
The full convolutions (1x1, 3x3) stay with torch (oneDNN / cuDNN GEMMs). In
evaluation mode the batch norms next to convolutions fold into them instead.

On the CPU the encoder cell runs channels-last (NHWC): oneDNN's 3x3
convolutions are faster there (see docs/design-notes.md), and the fused ops
take NHWC too, so no layout change happens between its ops. Its output stays
channels-last, as a convolution's does for a channels-last input, so a tower
of encoder cells changes layout once, at its first cell (a change back would
cost a full copy forward and backward).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import cell_fusion as cell_ops
from ..ops.layout import accumulation_dtype, contiguous_like
from .batch_norm import batch_norm_statistics, check_count, spans_processes, update_running_statistics
from .kernel_choice import fused_kernels_apply


def _bn_swish_batch_stats(bn: nn.BatchNorm2d, x):
    """swish(bn(x)) in training mode, through the one op that also folds the
    statistics' gradient into its backward (see ops.bn_swish_batch_stats); a
    synchronised bn takes its statistics from every process first."""
    acc = accumulation_dtype(x)
    if spans_processes(bn):
        return cell_ops.bn_swish_given_stats(x, *_statistics_of(bn, x), *_bn_params(bn, acc))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    check_count(count)
    y, mean, var = cell_ops.bn_swish_batch_stats(x, *_bn_params(bn, acc), bn.eps)
    update_running_statistics(bn, mean, var, count)
    return y


def _statistics_of(bn, x):
    """batch_norm_statistics for the input x of bn (computing x's moments only in training)."""
    if not bn.training:
        return batch_norm_statistics(bn)
    sums, sumsqs = cell_ops.plane_moments(x)
    return batch_norm_statistics(bn, sums, sumsqs, x.shape[0] * x.shape[2] * x.shape[3])


def _bn_params(bn, dtype):
    return bn.weight.to(dtype), bn.bias.to(dtype)


def _squeeze_excitation_gate(se, pooled):
    """The SE gate [N, C] in float32 from the channel means [N, C] (autocast off:
    the fused tail takes float32 gates)."""
    with torch.autocast(pooled.device.type, enabled=False):
        w1, b1, w2, b2 = (t.to(pooled.dtype) for t in (se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias))
        return torch.sigmoid(F.linear(F.relu(F.linear(pooled, w1, b1)), w2, b2))


def _tail(cell, h, skip, bn=None):
    """skip + cell.residual_scale * SE(BN(h)) (bn None: no batch norm before the SE)."""
    acc = accumulation_dtype(h)
    sums, sumsqs = cell_ops.plane_moments(h)
    hw = h.shape[2] * h.shape[3]
    if bn is None:
        ones = torch.ones(h.shape[1], dtype=acc, device=h.device)
        mean, invstd, weight, bias = ones * 0, ones, ones, ones * 0
    else:
        mean, invstd = batch_norm_statistics(bn, sums, sumsqs, h.shape[0] * hw)
        weight, bias = _bn_params(bn, acc)
    pooled = (sums / hw - mean) * invstd * weight + bias  # mean over H, W of BN(h), [N, C]
    gate = _squeeze_excitation_gate(cell.se, pooled)
    return cell_ops.bn_gate_residual(h, contiguous_like(skip.to(h.dtype), h), mean, invstd, weight, bias, gate,
                                     cell.residual_scale)


def _encoder_layout(x):
    """The memory format the fused encoder cell computes in on x's device."""
    return torch.channels_last if x.device.type == "cpu" else torch.contiguous_format


def encoder_input_layout(cell, x):
    """The memory format that spares `cell` (an EncoderCell) a layout change of
    an input on x's device and of x's dtype; None where it runs eagerly."""
    return _encoder_layout(x) if fused_kernels_apply(cell.kernels, x) else None


def encoder_cell_forward(cell, x):
    layout = _encoder_layout(x)
    x = x.contiguous(memory_format=layout)
    if not cell.training:
        return _encoder_cell_eval(cell, x, layout)
    layers = cell.layers()
    a0 = _bn_swish_batch_stats(layers.bn0, x)
    c1 = layers.conv1(a0).contiguous(memory_format=layout)
    a1 = _bn_swish_batch_stats(layers.bn1, c1)
    c2 = layers.conv2(a1).contiguous(memory_format=layout)
    return _tail(cell, c2, cell.skip(x))


def generative_cell_forward(cell, x):
    if not cell.training:
        return _generative_cell_eval(cell, x)
    upsample, bn0, conv_in, bn1, depthwise, bn2, conv_out, bn3 = cell.layers()
    skip = cell.skip(x)
    h = upsample(x).contiguous()
    acc = accumulation_dtype(h)
    # BN0 (no activation after it) folds into the 1x1 conv that follows:
    # W (h * scale + shift) = (W * scale) h + W shift.
    mean0, invstd0 = _statistics_of(bn0, h)
    scale0 = invstd0 * bn0.weight
    shift0 = bn0.bias - mean0 * scale0
    w_in = conv_in.normalized_weight()
    h1 = F.conv2d(h, w_in * scale0[None, :, None, None], w_in.flatten(1) @ shift0).contiguous()
    mean1, invstd1 = _statistics_of(bn1, h1)
    dw_bias = depthwise.bias if depthwise.bias is not None else torch.zeros_like(mean1)
    y, sums, sumsqs = cell_ops.bn_swish_dwconv(h1, mean1, invstd1, *_bn_params(bn1, acc),
                                               depthwise.normalized_weight().to(acc), dw_bias.to(acc))
    mean2, invstd2 = batch_norm_statistics(bn2, sums, sumsqs, y.shape[0] * y.shape[2] * y.shape[3])
    a = cell_ops.bn_swish_given_stats(y, mean2, invstd2, *_bn_params(bn2, acc))
    out = F.conv2d(a, conv_out.normalized_weight()).contiguous()
    return _tail(cell, out, skip, bn3)


# --- evaluation mode -----------------------------------------------------------------------
# With running statistics every batch norm is a fixed per-channel affine, so the
# ones next to a convolution fold into its weights and bias and cost nothing;
# what remains is the encoder cell's first BN + Swish (one fused pass), the
# convolutions, Swish in place, and the fused SE tail.

def _eval_affine(bn):
    """(scale, shift) with bn(x) = x * scale + shift per channel (running statistics)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _conv_then_bn(conv, bn, x, weight=None, bias=None):
    """bn(conv(x)) as one convolution (weight/bias: the conv's own unless given)."""
    scale, shift = _eval_affine(bn)
    weight = conv.normalized_weight() if weight is None else weight
    bias = conv.bias if bias is None else bias
    bias = shift if bias is None else bias * scale + shift
    return F.conv2d(x, weight * scale.view(-1, 1, 1, 1), bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _swish(x):
    # In place unless autograd may need the input (a conv's output, used by nothing else).
    return F.silu(x, inplace=not torch.is_grad_enabled())


def _encoder_cell_eval(cell, x, layout):
    layers = cell.layers()
    bn0 = layers.bn0
    a0 = cell_ops.bn_swish_given_stats(x, *batch_norm_statistics(bn0), *_bn_params(bn0, accumulation_dtype(x)))
    a1 = _swish(_conv_then_bn(layers.conv1, layers.bn1, a0))
    return _tail(cell, layers.conv2(a1).contiguous(memory_format=layout), cell.skip(x))


def _generative_cell_eval(cell, x):
    upsample, bn0, conv_in, bn1, depthwise, bn2, conv_out, bn3 = cell.layers()
    skip = cell.skip(x)
    scale0, shift0 = _eval_affine(bn0)
    w_in = conv_in.normalized_weight()
    # BN0 before the 1x1 conv and BN1 after it both fold into it.
    h = _swish(_conv_then_bn(conv_in, bn1, upsample(x), weight=w_in * scale0.view(1, -1, 1, 1),
                             bias=w_in.flatten(1) @ shift0))
    h = _swish(_conv_then_bn(depthwise, bn2, h))
    return _tail(cell, _conv_then_bn(conv_out, bn3, h).contiguous(), skip)
