// CUDA backend of the fused residual-cell ops: checks, allocation, the
// folded BN affine, and the launches of the kernels in cell_fusion_kernels.cuh
// (arithmetic in at::opmath_type: float for float16/bfloat16/float32 storage).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../cell_fusion.h"
#include "cell_fusion_kernels.cuh"

namespace ncpfast {
namespace ops {
namespace {

using namespace cell_kernels;

constexpr size_t kSharedLimit = core::kDefaultSharedBytesPerBlock;
// The kernels index planes as H*W contiguous values: NCHW only (the fused
// cells keep CUDA activations NCHW; channels_last is a CPU-backend layout).
constexpr const char* kBackend = "the CUDA backend";

// Rows per depthwise tile (dwconv_tile_rows), checked: at least one row, and
// no more tiles per plane than a grid's y extent holds.
int64_t depthwise_tile_rows(const char* op, int64_t H, int64_t W, int64_t K, int64_t element_bytes, int64_t buffers) {
  const int64_t rows = dwconv_tile_rows(H, W, K, element_bytes, buffers);
  TORCH_CHECK_VALUE(rows >= 1, op, ": planes of width ", W, " with a ", K, "x", K,
                    " kernel are too wide for the CUDA kernel's shared-memory tiles");
  TORCH_CHECK_VALUE((H + rows - 1) / rows <= kMaxGridY, op, ": planes of ", H, " rows need ", (H + rows - 1) / rows,
                    " tiles of ", rows, " rows, more than a CUDA grid's ", kMaxGridY);
  return rows;
}

dim3 plane_grid(const at::Tensor& x) {
  const int64_t planes = x.size(0) * x.size(1);
  TORCH_CHECK_VALUE(planes < (int64_t(1) << 31), "cell op: N * C = ", planes, " exceeds the CUDA grid");
  return dim3(static_cast<unsigned>(planes));
}

#define NCPFAST_CHECK_LAUNCH(op) C10_CUDA_KERNEL_LAUNCH_CHECK()
#define NCPFAST_DISPATCH(x, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), name, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor> plane_moments_cuda(const at::Tensor& x) {
  require_nchw("plane_moments", "x", x, kBackend);
  const auto acc = check_activation("plane_moments", "x", x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor sum = plane_tensor(x, acc), sumsq = plane_tensor(x, acc);
  if (x.numel() == 0) return {sum.zero_(), sumsq.zero_()};
  NCPFAST_DISPATCH(x, "plane_moments_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    plane_moments_kernel<scalar_t, A><<<plane_grid(x), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), x.size(2) * x.size(3), sum.data_ptr<A>(), sumsq.data_ptr<A>());
  });
  NCPFAST_CHECK_LAUNCH("plane_moments");
  return {sum, sumsq};
}

at::Tensor plane_moments_backward_cuda(const at::Tensor& x, const at::Tensor& grad_sum, const at::Tensor& grad_sumsq) {
  const char* op = "plane_moments_backward";
  require_nchw(op, "x", x, kBackend);
  check_plane_moments_backward(op, x, grad_sum, grad_sumsq);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = at::empty_like(x);
  if (x.numel() == 0) return grad_x;
  NCPFAST_DISPATCH(x, "plane_moments_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    plane_moments_backward_kernel<scalar_t, A><<<plane_grid(x), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), x.size(2) * x.size(3), grad_sum.data_ptr<A>(), grad_sumsq.data_ptr<A>(),
        grad_x.data_ptr<scalar_t>());
  });
  NCPFAST_CHECK_LAUNCH(op);
  return grad_x;
}

at::Tensor bn_swish_given_stats_cuda(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                                     const at::Tensor& weight, const at::Tensor& bias) {
  require_nchw("bn_swish_given_stats", "x", x, kBackend);
  check_bn_swish_given_stats("bn_swish_given_stats", x, mean, invstd, weight, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [scale, shift] = folded_affine(mean, invstd, weight, bias);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  NCPFAST_DISPATCH(x, "bn_swish_given_stats_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    bn_swish_kernel<scalar_t, A><<<plane_grid(x), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), x.size(1), x.size(2) * x.size(3), scale.data_ptr<A>(), shift.data_ptr<A>(),
        y.data_ptr<scalar_t>());
  });
  NCPFAST_CHECK_LAUNCH("bn_swish_given_stats");
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_given_stats_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
    const at::Tensor& weight, const at::Tensor& bias) {
  const char* op = "bn_swish_given_stats_backward";
  require_nchw(op, "x", x, kBackend);
  const auto acc = check_bn_swish_given_stats_backward(op, grad_out, x, mean, invstd, weight, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [scale, shift] = folded_affine(mean, invstd, weight, bias);
  at::Tensor grad_x = at::empty_like(x), sum_g = plane_tensor(x, acc), sum_gc = plane_tensor(x, acc);
  if (x.numel() == 0) return {grad_x, sum_g.zero_(), sum_gc.zero_()};
  NCPFAST_DISPATCH(x, "bn_swish_given_stats_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    bn_swish_backward_kernel<scalar_t, A><<<plane_grid(x), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), x.size(1), x.size(2) * x.size(3), scale.data_ptr<A>(),
        shift.data_ptr<A>(), mean.data_ptr<A>(), grad_x.data_ptr<scalar_t>(), sum_g.data_ptr<A>(),
        sum_gc.data_ptr<A>());
  });
  NCPFAST_CHECK_LAUNCH(op);
  return {grad_x, sum_g, sum_gc};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_batch_stats_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                                         const at::Tensor& bias, double eps) {
  require_nchw("bn_swish_batch_stats", "x", x, kBackend);
  const c10::cuda::CUDAGuard guard(x.device());
  return bn_swish_batch_stats_with(x, weight, bias, eps, &plane_moments_cuda, &bn_swish_given_stats_cuda);
}

// bn_swish_given_stats_backward's kernel, then the statistics' share of grad_x added
// with ATen ops (two more passes than a kernel would need; not yet measured
// on a GPU).
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_batch_stats_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
    const at::Tensor& weight, const at::Tensor& bias) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto [grad_x, sum_g, sum_gc] = bn_swish_given_stats_backward_cuda(grad_y, x, mean, invstd, weight, bias);
  const BatchNormGradients g = batch_norm_gradients(x, sum_g, sum_gc, mean, invstd, weight);
  const int64_t C = x.size(1);
  grad_x.add_(x * g.beta.view({1, C, 1, 1}) + g.alpha.view({1, C, 1, 1}));
  return {grad_x, g.grad_weight, g.grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_dwconv_cuda(
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& bn_weight,
    const at::Tensor& bn_bias, const at::Tensor& conv_weight, const at::Tensor& conv_bias) {
  const char* op = "bn_swish_dwconv";
  const int64_t K = check_dwconv(op, x, mean, invstd, bn_weight, bn_bias, conv_weight, conv_bias);
  const auto acc = accumulation_type(x);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [scale, shift] = folded_affine(mean, invstd, bn_weight, bn_bias);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return {y, plane_tensor(x, acc).zero_(), plane_tensor(x, acc).zero_()};
  const int64_t H = x.size(2), W = x.size(3);
  const int64_t element_bytes = acc == at::kDouble ? 8 : 4;
  const int64_t tile_rows = depthwise_tile_rows(op, H, W, K, element_bytes, 1);
  const int64_t tiles = (H + tile_rows - 1) / tile_rows;
  at::Tensor tile_sum = at::empty({x.size(0), x.size(1), tiles}, x.options().dtype(acc));
  at::Tensor tile_sumsq = at::empty_like(tile_sum);
  const dim3 grid(plane_grid(x).x, static_cast<unsigned>(tiles));
  const size_t shared = dwconv_shared_bytes(tile_rows, W, K, element_bytes);
  NCPFAST_DISPATCH(x, "bn_swish_dwconv_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    dwconv_kernel<scalar_t, A><<<grid, kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), x.size(1), H, W, K, tile_rows, scale.data_ptr<A>(), shift.data_ptr<A>(),
        conv_weight.data_ptr<A>(), conv_bias.data_ptr<A>(), y.data_ptr<scalar_t>(), tile_sum.data_ptr<A>(),
        tile_sumsq.data_ptr<A>());
  });
  NCPFAST_CHECK_LAUNCH(op);
  return {y, tile_sum.sum(2), tile_sumsq.sum(2)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_swish_dwconv_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& grad_sum, const at::Tensor& grad_sumsq, const at::Tensor& out,
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& bn_weight,
    const at::Tensor& bn_bias, const at::Tensor& conv_weight) {
  const char* op = "bn_swish_dwconv_backward";
  const int64_t K =
      check_dwconv_backward(op, grad_out, grad_sum, grad_sumsq, out, x, mean, invstd, bn_weight, bn_bias, conv_weight);
  const auto acc = accumulation_type(x);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [scale, shift] = folded_affine(mean, invstd, bn_weight, bn_bias);
  at::Tensor grad_x = at::empty_like(x);
  if (x.numel() == 0) {
    return {grad_x, plane_tensor(x, acc).zero_(), plane_tensor(x, acc).zero_(),
            at::zeros({N, C, K, K}, x.options().dtype(acc)), plane_tensor(x, acc).zero_()};
  }
  const int64_t element_bytes = acc == at::kDouble ? 8 : 4;
  const int64_t tile_rows = depthwise_tile_rows(op, H, W, K, element_bytes, 2);
  const int64_t tiles = (H + tile_rows - 1) / tile_rows;
  const auto options = x.options().dtype(acc);
  at::Tensor sum_g = at::empty({N, C, tiles}, options), sum_gc = at::empty({N, C, tiles}, options);
  at::Tensor grad_w = at::empty({N, C, tiles, K, K}, options), grad_b = at::empty({N, C, tiles}, options);
  const dim3 grid(plane_grid(x).x, static_cast<unsigned>(tiles));
  const size_t shared = dwconv_backward_shared_bytes(tile_rows, W, K, element_bytes);
  TORCH_CHECK_VALUE(shared <= kSharedLimit, op, ": a ", K, "x", K,
                    " kernel needs more shared memory than the CUDA kernel may use (", shared, " bytes)");
  NCPFAST_DISPATCH(x, "bn_swish_dwconv_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    dwconv_backward_kernel<scalar_t, A><<<grid, kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(
        grad_out.data_ptr<scalar_t>(), grad_sum.data_ptr<A>(), grad_sumsq.data_ptr<A>(), out.data_ptr<scalar_t>(),
        x.data_ptr<scalar_t>(), C, H, W, K, tile_rows, scale.data_ptr<A>(), shift.data_ptr<A>(), mean.data_ptr<A>(),
        conv_weight.data_ptr<A>(), grad_x.data_ptr<scalar_t>(), sum_g.data_ptr<A>(), sum_gc.data_ptr<A>(),
        grad_w.data_ptr<A>(), grad_b.data_ptr<A>());
  });
  NCPFAST_CHECK_LAUNCH(op);
  return {grad_x, sum_g.sum(2), sum_gc.sum(2), grad_w.sum(2), grad_b.sum(2)};
}

at::Tensor bn_gate_residual_cuda(const at::Tensor& h, const at::Tensor& skip, const at::Tensor& mean,
                                 const at::Tensor& invstd, const at::Tensor& weight, const at::Tensor& bias,
                                 const at::Tensor& gate, double residual_scale) {
  require_nchw("bn_gate_residual", "h", h, kBackend);
  check_gate("bn_gate_residual", h, skip, mean, invstd, weight, bias, gate);
  const c10::cuda::CUDAGuard guard(h.device());
  auto [scale, shift] = folded_affine(mean, invstd, weight, bias);
  auto [coef_a, coef_c] = gate_coefficients(scale, shift, gate, residual_scale);
  at::Tensor out = at::empty_like(h);
  if (h.numel() == 0) return out;
  NCPFAST_DISPATCH(h, "bn_gate_residual_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    gate_residual_kernel<scalar_t, A><<<plane_grid(h), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        h.data_ptr<scalar_t>(), skip.data_ptr<scalar_t>(), h.size(2) * h.size(3), coef_a.data_ptr<A>(),
        coef_c.data_ptr<A>(), out.data_ptr<scalar_t>());
  });
  NCPFAST_CHECK_LAUNCH("bn_gate_residual");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_gate_residual_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& mean, const at::Tensor& invstd,
    const at::Tensor& weight, const at::Tensor& gate, double residual_scale) {
  const char* op = "bn_gate_residual_backward";
  require_nchw(op, "h", h, kBackend);
  const auto acc = check_gate_backward(op, grad_out, h, mean, invstd, weight, gate);
  const c10::cuda::CUDAGuard guard(h.device());
  at::Tensor coef_a = gate_scale(invstd * weight, gate, residual_scale);
  at::Tensor grad_h = at::empty_like(h), sum_g = plane_tensor(h, acc), sum_gc = plane_tensor(h, acc);
  if (h.numel() == 0) return {grad_h, sum_g.zero_(), sum_gc.zero_()};
  NCPFAST_DISPATCH(h, "bn_gate_residual_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    gate_residual_backward_kernel<scalar_t, A><<<plane_grid(h), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad_out.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), h.size(1), h.size(2) * h.size(3), coef_a.data_ptr<A>(),
        mean.data_ptr<A>(), grad_h.data_ptr<scalar_t>(), sum_g.data_ptr<A>(), sum_gc.data_ptr<A>());
  });
  NCPFAST_CHECK_LAUNCH(op);
  return {grad_h, sum_g, sum_gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(ncpfast, CUDA, m) {
  m.impl("plane_moments", &plane_moments_cuda);
  m.impl("plane_moments_backward", &plane_moments_backward_cuda);
  m.impl("bn_swish_given_stats", &bn_swish_given_stats_cuda);
  m.impl("bn_swish_given_stats_backward", &bn_swish_given_stats_backward_cuda);
  m.impl("bn_swish_batch_stats", &bn_swish_batch_stats_cuda);
  m.impl("bn_swish_batch_stats_backward", &bn_swish_batch_stats_backward_cuda);
  m.impl("bn_swish_dwconv", &bn_swish_dwconv_cuda);
  m.impl("bn_swish_dwconv_backward", &bn_swish_dwconv_backward_cuda);
  m.impl("bn_gate_residual", &bn_gate_residual_cuda);
  m.impl("bn_gate_residual_backward", &bn_gate_residual_backward_cuda);
}

}  // namespace ops
}  // namespace ncpfast
