#include "cell_fusion.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

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
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || (half && x.is_cuda()), op, ": ",
                   name, " must be float32 or float64 (or float16/bfloat16 on CUDA), got ", dtype,
                   " on ", x.device());
  TORCH_CHECK_VALUE(x.is_contiguous(), op, ": ", name, " must be contiguous (NCHW)");
  return accumulation_type(x);
}

void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), op, ": ", name, " must have shape ", x.sizes(), ", got ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must be ", x.scalar_type(),
                   ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), ", expected ",
                    x.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check_param(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                 at::ScalarType dtype, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype,
                   " (parameters and statistics are float32, or float64 for float64 activations), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), ", expected ",
                    x.device());
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

at::ScalarType check_bn_swish(const char* op, const at::Tensor& x, const at::Tensor& mean,
                              const at::Tensor& invstd, const at::Tensor& weight, const at::Tensor& bias) {
  const auto acc = check_activation(op, "x", x);
  check_bn_params(op, x, mean, invstd, weight, bias);
  return acc;
}

at::ScalarType check_bn_swish_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                       const at::Tensor& mean, const at::Tensor& invstd,
                                       const at::Tensor& weight, const at::Tensor& bias) {
  const auto acc = check_bn_swish(op, x, mean, invstd, weight, bias);
  check_like(op, "grad_out", grad_out, x);
  return acc;
}

int64_t check_dwconv(const char* op, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                     const at::Tensor& bn_weight, const at::Tensor& bn_bias, const at::Tensor& conv_weight,
                     const at::Tensor& conv_bias) {
  const auto acc = check_bn_swish(op, x, mean, invstd, bn_weight, bn_bias);
  const int64_t K = check_depthwise_weight(op, conv_weight, x);
  check_param(op, "conv_bias", conv_bias, {x.size(1)}, acc, x);
  return K;
}

int64_t check_dwconv_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& grad_sum,
                              const at::Tensor& grad_sumsq, const at::Tensor& out, const at::Tensor& x,
                              const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& bn_weight,
                              const at::Tensor& bn_bias, const at::Tensor& conv_weight) {
  check_bn_swish_backward(op, grad_out, x, mean, invstd, bn_weight, bn_bias);
  const int64_t K = check_depthwise_weight(op, conv_weight, x);
  check_like(op, "out", out, x);
  check_plane_moments_backward(op, x, grad_sum, grad_sumsq);
  return K;
}

void check_gate(const char* op, const at::Tensor& h, const at::Tensor& skip, const at::Tensor& mean,
                const at::Tensor& invstd, const at::Tensor& weight, const at::Tensor& bias,
                const at::Tensor& gate) {
  const auto acc = check_activation(op, "h", h);
  check_bn_params(op, h, mean, invstd, weight, bias);
  check_like(op, "skip", skip, h);
  check_param(op, "gate", gate, {h.size(0), h.size(1)}, acc, h);
}

at::ScalarType check_gate_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& h,
                                   const at::Tensor& mean, const at::Tensor& invstd,
                                   const at::Tensor& weight, const at::Tensor& gate) {
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

}  // namespace ops
}  // namespace ncpfast
