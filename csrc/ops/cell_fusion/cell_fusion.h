// ncpfast's fused residual-cell ops: what the CPU and CUDA backends share.
//
//   plane_moments          per-(image, channel) sum and sum of squares
//   bn_swish_given_stats               swish(batch-norm affine(x)), backward recomputes from x
//   bn_swish_dwconv        depthwise conv of swish(BN(x)), plus the output's moments
//   bn_gate_residual       skip + residual_scale * gate * BN(h)
//
// Activations are NCHW; the CPU backend also takes channels_last (NHWC) ones,
// except in the depthwise conv (see is_channels_last). Per-channel parameters (mean, invstd, weight, bias)
// and every reduction are float32 (float64 when the activations are float64):
// under autocast the activations are half precision and the arithmetic float32.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace ncpfast {
namespace ops {

// The dtype of x's parameters and reductions: kDouble for double x, else kFloat.
at::ScalarType accumulation_type(const at::Tensor& x);

// An [N, C] tensor of per-plane reductions of x, uninitialised.
at::Tensor plane_tensor(const at::Tensor& x, at::ScalarType dtype);

// x must be a 4-D floating tensor, contiguous in NCHW or in channels_last
// (NHWC); returns accumulation_type(x).
at::ScalarType check_activation(const char* op, const char* name, const at::Tensor& x);

// Whether x is laid out NHWC (channels_last-contiguous and not NCHW-contiguous;
// a tensor that is both, e.g. with H = W = 1, has one memory order and counts as NCHW).
bool is_channels_last(const at::Tensor& x);

// Rejects a channels_last x where `which` (e.g. "the CUDA backend") has NCHW kernels only.
void require_nchw(const char* op, const char* name, const at::Tensor& x, const char* which);

// Another activation with exactly x's shape, dtype, device and memory layout.
void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x);

// A contiguous tensor of the given shape and dtype on x's device.
void check_param(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape, at::ScalarType dtype,
                 const at::Tensor& x);

// Checks the four batch-norm parameters [C] of x (x itself already checked).
void check_bn_params(const char* op, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                     const at::Tensor& weight, const at::Tensor& bias);

// The depthwise weight must be [C, 1, K, K] with K odd; returns K.
int64_t check_depthwise_weight(const char* op, const at::Tensor& weight, const at::Tensor& x);

// scale = invstd * weight and shift = bias - mean * scale, per channel.
std::pair<at::Tensor, at::Tensor> folded_affine(const at::Tensor& mean, const at::Tensor& invstd,
                                                const at::Tensor& weight, const at::Tensor& bias);

// Whole-argument checks of each op, shared by the CPU and CUDA backends; each
// returns accumulation_type of the activation (the depthwise ones: K).
at::ScalarType check_plane_moments_backward(const char* op, const at::Tensor& x, const at::Tensor& grad_sum,
                                            const at::Tensor& grad_sumsq);
at::ScalarType check_bn_swish_given_stats(const char* op, const at::Tensor& x, const at::Tensor& mean,
                                          const at::Tensor& invstd, const at::Tensor& weight, const at::Tensor& bias);
at::ScalarType check_bn_swish_given_stats_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                                   const at::Tensor& mean, const at::Tensor& invstd,
                                                   const at::Tensor& weight, const at::Tensor& bias);
int64_t check_dwconv(const char* op, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                     const at::Tensor& bn_weight, const at::Tensor& bn_bias, const at::Tensor& conv_weight,
                     const at::Tensor& conv_bias);
int64_t check_dwconv_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& grad_sum,
                              const at::Tensor& grad_sumsq, const at::Tensor& out, const at::Tensor& x,
                              const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& bn_weight,
                              const at::Tensor& bn_bias, const at::Tensor& conv_weight);

// Checks bn_gate_residual's h, skip, gate [N, C] and BN parameters.
void check_gate(const char* op, const at::Tensor& h, const at::Tensor& skip, const at::Tensor& mean,
                const at::Tensor& invstd, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& gate);

// Checks bn_gate_residual_backward's inputs; returns the reduction dtype.
at::ScalarType check_gate_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& h,
                                   const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& weight,
                                   const at::Tensor& gate);

// Per-plane [N, C] factor residual_scale * gate * scale (scale per channel).
at::Tensor gate_scale(const at::Tensor& scale, const at::Tensor& gate, double residual_scale);

// Per-plane [N, C] coefficients of out = skip + a h + c:
// a = gate_scale(scale), c = gate_scale(shift).
std::pair<at::Tensor, at::Tensor> gate_coefficients(const at::Tensor& scale, const at::Tensor& shift,
                                                    const at::Tensor& gate, double residual_scale);

// --- bn_swish_batch_stats: batch norm with batch statistics + Swish -------------
// The forward is composed from a backend's own plane_moments and bn_swish_given_stats
// (passed in); the statistics' gradient is computed here once for both
// backends' backwards.
using MomentsFn = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor&);
using BnSwishFn = at::Tensor (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&);
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_batch_stats_with(const at::Tensor& x, const at::Tensor& weight,
                                                                         const at::Tensor& bias, double eps,
                                                                         MomentsFn moments,
                                                                         BnSwishFn bn_swish_given_stats);

// From the per-plane sums of g_u and g_u (x - mean) ([N, C], as
// bn_swish_given_stats_backward returns them), u = (x - mean) invstd weight + bias with
// the batch statistics of x: grad_x = g_u * invstd * weight + alpha + beta * x
// per channel (alpha + beta * x is the gradient through the statistics), and
// the parameters' gradients. alpha and beta are contiguous [C].
struct BatchNormGradients {
  at::Tensor alpha, beta, grad_weight, grad_bias;
};
BatchNormGradients batch_norm_gradients(const at::Tensor& x, const at::Tensor& sum_g, const at::Tensor& sum_gc,
                                        const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& weight);

}  // namespace ops
}  // namespace ncpfast
