#include "cell_fusion.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace ncpfast {
namespace ops {

at::ScalarType accumulation_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor plane_tensor(const at::Tensor& x, at::ScalarType dtype) {
  return at::empty({x.size(0), x.size(1)}, x.options().dtype(dtype));
}

at::ScalarType check_activation(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": ", name, " must be 4-D [N, C, H, W], got shape ", x.sizes());
  const auto dtype = x.scalar_type();
  const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || (half && x.is_cuda()), op, ": ", name,
                   " must be float32 or float64 (or float16/bfloat16 on CUDA), got ", dtype, " on ", x.device());
  TORCH_CHECK_VALUE(x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast), op, ": ", name,
                    " must be contiguous (NCHW) or channels_last-contiguous (NHWC), got strides ", x.strides());
  return accumulation_type(x);
}

bool is_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

void require_nchw(const char* op, const char* name, const at::Tensor& x, const char* which) {
  TORCH_CHECK_VALUE(!is_channels_last(x), op, ": ", name, " is channels_last, but ", which,
                    " takes NCHW-contiguous activations only (call .contiguous() first)");
}

void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), op, ": ", name, " must have shape ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must be ", x.scalar_type(), ", got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), ", expected ", x.device());
  if (is_channels_last(x)) {
    TORCH_CHECK_VALUE(t.is_contiguous(at::MemoryFormat::ChannelsLast), op, ": ", name,
                      " must be channels_last-contiguous like the other activation (x/h), got strides ", t.strides());
  } else {
    TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name,
                      " must be contiguous (NCHW) like the other activation (x/h), got strides ", t.strides());
  }
}

void check_param(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape, at::ScalarType dtype,
                 const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype,
                   " (parameters and statistics are float32, or float64 for float64 activations), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), ", expected ", x.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check_bn_params(const char* op, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                     const at::Tensor& weight, const at::Tensor& bias) {
  const auto dtype = accumulation_type(x);
  const int64_t C = x.size(1);
  check_param(op, "mean", mean, {C}, dtype, x);
  check_param(op, "invstd", invstd, {C}, dtype, x);
  check_param(op, "weight", weight, {C}, dtype, x);
  check_param(op, "bias", bias, {C}, dtype, x);
}

int64_t check_depthwise_weight(const char* op, const at::Tensor& weight, const at::Tensor& x) {
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == x.size(1) && weight.size(1) == 1 &&
                        weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1,
                    op, ": conv_weight must be [C, 1, K, K] with C = ", x.size(1),
                    " and K odd (a 'same' depthwise conv), got ", weight.sizes());
  check_param(op, "conv_weight", weight, weight.sizes(), accumulation_type(x), x);
  return weight.size(2);
}

std::pair<at::Tensor, at::Tensor> folded_affine(const at::Tensor& mean, const at::Tensor& invstd,
                                                const at::Tensor& weight, const at::Tensor& bias) {
  at::Tensor scale = invstd * weight;
  return {scale, bias - mean * scale};
}

at::ScalarType check_plane_moments_backward(const char* op, const at::Tensor& x, const at::Tensor& grad_sum,
                                            const at::Tensor& grad_sumsq) {
  const auto acc = check_activation(op, "x", x);
  check_param(op, "grad_sum", grad_sum, {x.size(0), x.size(1)}, acc, x);
  check_param(op, "grad_sumsq", grad_sumsq, {x.size(0), x.size(1)}, acc, x);
  return acc;
}

at::ScalarType check_bn_swish_given_stats(const char* op, const at::Tensor& x, const at::Tensor& mean,
                                          const at::Tensor& invstd, const at::Tensor& weight, const at::Tensor& bias) {
  const auto acc = check_activation(op, "x", x);
  check_bn_params(op, x, mean, invstd, weight, bias);
  return acc;
}

at::ScalarType check_bn_swish_given_stats_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                                   const at::Tensor& mean, const at::Tensor& invstd,
                                                   const at::Tensor& weight, const at::Tensor& bias) {
  const auto acc = check_bn_swish_given_stats(op, x, mean, invstd, weight, bias);
  check_like(op, "grad_out", grad_out, x);
  return acc;
}

int64_t check_dwconv(const char* op, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                     const at::Tensor& bn_weight, const at::Tensor& bn_bias, const at::Tensor& conv_weight,
                     const at::Tensor& conv_bias) {
  require_nchw(op, "x", x, "the depthwise conv");
  const auto acc = check_bn_swish_given_stats(op, x, mean, invstd, bn_weight, bn_bias);
  const int64_t K = check_depthwise_weight(op, conv_weight, x);
  check_param(op, "conv_bias", conv_bias, {x.size(1)}, acc, x);
  return K;
}

int64_t check_dwconv_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& grad_sum,
                              const at::Tensor& grad_sumsq, const at::Tensor& out, const at::Tensor& x,
                              const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& bn_weight,
                              const at::Tensor& bn_bias, const at::Tensor& conv_weight) {
  require_nchw(op, "x", x, "the depthwise conv");
  check_bn_swish_given_stats_backward(op, grad_out, x, mean, invstd, bn_weight, bn_bias);
  const int64_t K = check_depthwise_weight(op, conv_weight, x);
  check_like(op, "out", out, x);
  check_plane_moments_backward(op, x, grad_sum, grad_sumsq);
  return K;
}

void check_gate(const char* op, const at::Tensor& h, const at::Tensor& skip, const at::Tensor& mean,
                const at::Tensor& invstd, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& gate) {
  const auto acc = check_activation(op, "h", h);
  check_bn_params(op, h, mean, invstd, weight, bias);
  check_like(op, "skip", skip, h);
  check_param(op, "gate", gate, {h.size(0), h.size(1)}, acc, h);
}

at::ScalarType check_gate_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& h,
                                   const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& weight,
                                   const at::Tensor& gate) {
  const auto acc = check_activation(op, "h", h);
  check_like(op, "grad_out", grad_out, h);
  const int64_t C = h.size(1);
  check_param(op, "mean", mean, {C}, acc, h);
  check_param(op, "invstd", invstd, {C}, acc, h);
  check_param(op, "weight", weight, {C}, acc, h);
  check_param(op, "gate", gate, {h.size(0), C}, acc, h);
  return acc;
}

at::Tensor gate_scale(const at::Tensor& scale, const at::Tensor& gate, double residual_scale) {
  return (gate * residual_scale * scale).contiguous();
}

std::pair<at::Tensor, at::Tensor> gate_coefficients(const at::Tensor& scale, const at::Tensor& shift,
                                                    const at::Tensor& gate, double residual_scale) {
  return {gate_scale(scale, gate, residual_scale), gate_scale(shift, gate, residual_scale)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_batch_stats_with(const at::Tensor& x, const at::Tensor& weight,
                                                                         const at::Tensor& bias, double eps,
                                                                         MomentsFn moments,
                                                                         BnSwishFn bn_swish_given_stats) {
  const char* op = "bn_swish_batch_stats";
  const auto acc = check_activation(op, "x", x);
  const int64_t C = x.size(1), count = x.size(0) * x.size(2) * x.size(3);
  check_param(op, "weight", weight, {C}, acc, x);
  check_param(op, "bias", bias, {C}, acc, x);
  TORCH_CHECK_VALUE(count > 1, op, ": expected more than 1 value per channel when training, got ", count);
  TORCH_CHECK_VALUE(eps > 0, op, ": eps must be positive, got ", eps);
  auto [sum, sumsq] = moments(x);
  at::Tensor mean = sum.sum(0) / count;
  at::Tensor var = (sumsq.sum(0) / count - mean * mean).clamp_min(0);
  return {bn_swish_given_stats(x, mean, at::rsqrt(var + eps), weight, bias), mean, var};
}

BatchNormGradients batch_norm_gradients(const at::Tensor& x, const at::Tensor& sum_g, const at::Tensor& sum_gc,
                                        const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& weight) {
  const double count = static_cast<double>(x.size(0) * x.size(2) * x.size(3));
  // u = (x - mean) invstd weight + bias; S1 = sum g_u, S2 = sum g_u (x - mean).
  const at::Tensor s1 = sum_g.sum(0), s2 = sum_gc.sum(0);
  const at::Tensor grad_mean = -invstd * weight * s1, grad_invstd = weight * s2;
  const at::Tensor grad_var = -0.5 * invstd * invstd * invstd * grad_invstd;  // invstd = (var + eps)^(-1/2)
  // mean = sum x / count and var = sum x^2 / count - mean^2, so x receives
  // (grad_mean - 2 mean grad_var) / count + x * 2 grad_var / count.
  const at::Tensor alpha = ((grad_mean - 2 * mean * grad_var) / count).contiguous();
  const at::Tensor beta = (2 * grad_var / count).contiguous();
  return {alpha, beta, invstd * s2, s1};
}

}  // namespace ops
}  // namespace ncpfast

// The schema of this op (its backends register their kernels in cpu/ and cuda/).
TORCH_LIBRARY_FRAGMENT(ncpfast, m) {
  // Fused residual-cell ops (csrc/ops/cell_fusion). Activations NCHW (or
  // channels_last on the CPU, but for the depthwise conv); the batch norm
  // enters as (mean, invstd, weight, bias) per channel; reductions come back
  // per (image, channel) plane, [N, C], and are summed over the batch in
  // Python. Backward ops recompute from the saved input.
  m.def("plane_moments(Tensor x) -> (Tensor sum, Tensor sumsq)");
  m.def("plane_moments_backward(Tensor x, Tensor grad_sum, Tensor grad_sumsq) -> Tensor");
  m.def("bn_swish_given_stats(Tensor x, Tensor mean, Tensor invstd, Tensor weight, Tensor bias) -> Tensor");
  m.def(
      "bn_swish_given_stats_backward(Tensor grad_out, Tensor x, Tensor mean, Tensor invstd, Tensor weight, "
      "Tensor bias) -> (Tensor grad_x, Tensor sum_grad, Tensor sum_grad_centered)");
  // Batch norm with batch statistics (training) + Swish in one op: y and the
  // batch mean and biased variance [C] (statistics for the running averages,
  // not differentiated). Its backward folds the gradient that reaches x through
  // the statistics into grad_x: plane_moments + bn_swish_given_stats would leave autograd
  // a second full-size gradient to compute and add.
  m.def("bn_swish_batch_stats(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor y, Tensor mean, Tensor var)");
  m.def(
      "bn_swish_batch_stats_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor invstd, Tensor weight, "
      "Tensor bias) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "bn_swish_dwconv(Tensor x, Tensor mean, Tensor invstd, Tensor bn_weight, Tensor bn_bias, "
      "Tensor conv_weight, Tensor conv_bias) -> (Tensor out, Tensor sum, Tensor sumsq)");
  m.def(
      "bn_swish_dwconv_backward(Tensor grad_out, Tensor grad_sum, Tensor grad_sumsq, Tensor out, "
      "Tensor x, Tensor mean, Tensor invstd, Tensor bn_weight, Tensor bn_bias, Tensor conv_weight) "
      "-> (Tensor grad_x, Tensor sum_grad, Tensor sum_grad_centered, Tensor grad_conv_weight, "
      "Tensor grad_conv_bias)");
  m.def(
      "bn_gate_residual(Tensor h, Tensor skip, Tensor mean, Tensor invstd, Tensor weight, "
      "Tensor bias, Tensor gate, float residual_scale) -> Tensor");
  m.def(
      "bn_gate_residual_backward(Tensor grad_out, Tensor h, Tensor mean, Tensor invstd, "
      "Tensor weight, Tensor gate, float residual_scale) "
      "-> (Tensor grad_h, Tensor sum_grad, Tensor sum_grad_centered)");
}
