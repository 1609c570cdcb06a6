// CUDA backend of the fused residual-cell ops.
//
// Elementwise ops run one block per (image, channel) plane, so the plane's
// reductions are a block reduction and need no atomics (deterministic). The
// depthwise conv runs one block per (plane, tile of rows): the tile's padded
// input rows, activated once (BN-apply + swish), sit in shared memory; per-tile
// partial reductions are summed over tiles afterwards. Arithmetic is in
// at::opmath_type (float for float16/bfloat16/float32 storage).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../../../core/swish.h"
#include "../cell_fusion.h"

namespace ncpfast {
namespace ops {
namespace {

constexpr int kThreads = 256;
// Shared memory one depthwise block may use for its padded tiles.
constexpr int64_t kTileBytes = 32 * 1024;

// Sum over the block of each of the NV values per thread; every thread gets the totals.
template <typename T, int NV>
__device__ void block_sum(T (&v)[NV]) {
  __shared__ T partial[NV][kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    for (int offset = 16; offset > 0; offset /= 2) v[k] += __shfl_down_sync(0xffffffffu, v[k], offset);
    if (lane == 0) partial[k][warp] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    T total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += partial[k][w];
    v[k] = total;
  }
  __syncthreads();  // partial may be reused by the next call
}

template <typename T, typename A>
__device__ __forceinline__ A load(const T* p, int64_t i) {
  return static_cast<A>(p[i]);
}

// ------------------------------------------------------------ elementwise ops

template <typename T, typename A>
__global__ void plane_moments_kernel(const T* x, int64_t HW, A* sum, A* sumsq) {
  const int64_t p = blockIdx.x;
  A v[2] = {0, 0};
  for (int64_t i = threadIdx.x; i < HW; i += kThreads) {
    const A value = load<T, A>(x, p * HW + i);
    v[0] += value;
    v[1] += value * value;
  }
  block_sum(v);
  if (threadIdx.x == 0) {
    sum[p] = v[0];
    sumsq[p] = v[1];
  }
}

template <typename T, typename A>
__global__ void plane_moments_backward_kernel(const T* x, int64_t HW, const A* grad_sum, const A* grad_sumsq,
                                              T* grad_x) {
  const int64_t p = blockIdx.x;
  const A gs = grad_sum[p], gq = grad_sumsq[p];
  for (int64_t i = threadIdx.x; i < HW; i += kThreads)
    grad_x[p * HW + i] = static_cast<T>(gs + A(2) * gq * load<T, A>(x, p * HW + i));
}

template <typename T, typename A>
__global__ void bn_swish_kernel(const T* x, int64_t C, int64_t HW, const A* scale, const A* shift, T* y) {
  const int64_t p = blockIdx.x, c = p % C;
  const A sc = scale[c], sh = shift[c];
  for (int64_t i = threadIdx.x; i < HW; i += kThreads)
    y[p * HW + i] = static_cast<T>(core::swish(load<T, A>(x, p * HW + i) * sc + sh));
}

template <typename T, typename A>
__global__ void bn_swish_backward_kernel(const T* grad_y, const T* x, int64_t C, int64_t HW, const A* scale,
                                         const A* shift, const A* mean, T* grad_x, A* sum_g, A* sum_gc) {
  const int64_t p = blockIdx.x, c = p % C;
  const A sc = scale[c], sh = shift[c], m = mean[c];
  A v[2] = {0, 0};
  for (int64_t i = threadIdx.x; i < HW; i += kThreads) {
    const A xv = load<T, A>(x, p * HW + i);
    const A g = load<T, A>(grad_y, p * HW + i) * core::swish_grad(xv * sc + sh);
    grad_x[p * HW + i] = static_cast<T>(g * sc);
    v[0] += g;
    v[1] += g * (xv - m);
  }
  block_sum(v);
  if (threadIdx.x == 0) {
    sum_g[p] = v[0];
    sum_gc[p] = v[1];
  }
}

template <typename T, typename A>
__global__ void gate_residual_kernel(const T* h, const T* skip, int64_t HW, const A* coef_a, const A* coef_c,
                                     T* out) {
  const int64_t p = blockIdx.x;
  const A a = coef_a[p], c = coef_c[p];
  for (int64_t i = threadIdx.x; i < HW; i += kThreads)
    out[p * HW + i] = static_cast<T>(load<T, A>(skip, p * HW + i) + a * load<T, A>(h, p * HW + i) + c);
}

template <typename T, typename A>
__global__ void gate_residual_backward_kernel(const T* grad_out, const T* h, int64_t C, int64_t HW,
                                              const A* coef_a, const A* mean, T* grad_h, A* sum_g, A* sum_gc) {
  const int64_t p = blockIdx.x;
  const A a = coef_a[p], m = mean[p % C];
  A v[2] = {0, 0};
  for (int64_t i = threadIdx.x; i < HW; i += kThreads) {
    const A g = load<T, A>(grad_out, p * HW + i);
    grad_h[p * HW + i] = static_cast<T>(a * g);
    v[0] += g;
    v[1] += g * (load<T, A>(h, p * HW + i) - m);
  }
  block_sum(v);
  if (threadIdx.x == 0) {
    sum_g[p] = v[0];
    sum_gc[p] = v[1];
  }
}

// ------------------------------------------------------------ depthwise conv

// Rows [r0 - P, r0 + rows + P) of a plane, zero-padded by P columns, into
// shared memory; value(i, j) gives the unpadded element (i, j) of the plane.
template <typename A, typename F>
__device__ void fill_tile(A* tile, int64_t r0, int64_t rows, int64_t H, int64_t W, int64_t P, const F& value) {
  const int64_t Wp = W + 2 * P, count = (rows + 2 * P) * Wp;
  for (int64_t t = threadIdx.x; t < count; t += kThreads) {
    const int64_t i = r0 - P + t / Wp, j = t % Wp - P;
    tile[t] = (i >= 0 && i < H && j >= 0 && j < W) ? value(i, j) : A(0);
  }
}

template <typename T, typename A>
__global__ void dwconv_kernel(const T* x, int64_t C, int64_t H, int64_t W, int64_t K, int64_t tile_rows,
                              const A* scale, const A* shift, const A* weight, const A* bias, T* y,
                              A* tile_sum, A* tile_sumsq) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  A* tile = reinterpret_cast<A*>(shared_bytes);
  const int64_t p = blockIdx.x, c = p % C, r0 = blockIdx.y * tile_rows, P = K / 2, Wp = W + 2 * P;
  const int64_t rows = min(tile_rows, H - r0);
  const T* xp = x + p * H * W;
  const A sc = scale[c], sh = shift[c];
  fill_tile(tile, r0, rows, H, W, P, [&](int64_t i, int64_t j) { return core::swish(load<T, A>(xp, i * W + j) * sc + sh); });
  __syncthreads();
  const A* w = weight + c * K * K;
  A v[2] = {0, 0};
  for (int64_t t = threadIdx.x; t < rows * W; t += kThreads) {
    const int64_t i = t / W, j = t % W;
    A acc = bias[c];
    for (int64_t ki = 0; ki < K; ++ki)
      for (int64_t kj = 0; kj < K; ++kj) acc += w[ki * K + kj] * tile[(i + ki) * Wp + j + kj];
    const T stored = static_cast<T>(acc);
    y[p * H * W + (r0 + i) * W + j] = stored;
    const A value = static_cast<A>(stored);  // the moments of what the next op reads
    v[0] += value;
    v[1] += value * value;
  }
  block_sum(v);
  if (threadIdx.x == 0) {
    tile_sum[p * gridDim.y + blockIdx.y] = v[0];
    tile_sumsq[p * gridDim.y + blockIdx.y] = v[1];
  }
}

template <typename T, typename A>
__global__ void dwconv_backward_kernel(const T* grad_y, const A* grad_sum, const A* grad_sumsq, const T* y,
                                       const T* x, int64_t C, int64_t H, int64_t W, int64_t K, int64_t tile_rows,
                                       const A* scale, const A* shift, const A* mean, const A* weight, T* grad_x,
                                       A* tile_sum_g, A* tile_sum_gc, A* tile_grad_w, A* tile_grad_b) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int64_t p = blockIdx.x, c = p % C, r0 = blockIdx.y * tile_rows, P = K / 2, Wp = W + 2 * P;
  const int64_t rows = min(tile_rows, H - r0), tile_size = (tile_rows + 2 * P) * Wp;
  const int64_t tile_index = p * gridDim.y + blockIdx.y;
  A* a_tile = reinterpret_cast<A*>(shared_bytes);
  A* g_tile = a_tile + tile_size;
  const T* xp = x + p * H * W;
  const T* gyp = grad_y + p * H * W;
  const T* yp = y + p * H * W;
  const A sc = scale[c], sh = shift[c], m = mean[c], gs = grad_sum[p], gq = grad_sumsq[p];
  fill_tile(a_tile, r0, rows, H, W, P, [&](int64_t i, int64_t j) { return core::swish(load<T, A>(xp, i * W + j) * sc + sh); });
  // The effective output gradient, including the moments' share.
  fill_tile(g_tile, r0, rows, H, W, P, [&](int64_t i, int64_t j) {
    return load<T, A>(gyp, i * W + j) + gs + A(2) * gq * load<T, A>(yp, i * W + j);
  });
  __syncthreads();
  const A* w = weight + c * K * K;
  // Weight and bias gradients from this tile's output rows r0 .. r0 + rows.
  for (int64_t tap = 0; tap <= K * K; ++tap) {  // tap == K * K: the bias
    const int64_t ki = tap / K, kj = tap % K;
    A v[1] = {0};
    for (int64_t t = threadIdx.x; t < rows * W; t += kThreads) {
      const int64_t i = t / W, j = t % W;
      const A g = g_tile[(i + P) * Wp + j + P];
      v[0] += tap == K * K ? g : g * a_tile[(i + ki) * Wp + j + kj];
    }
    block_sum(v);
    if (threadIdx.x == 0) {
      if (tap == K * K) tile_grad_b[tile_index] = v[0];
      else tile_grad_w[tile_index * K * K + tap] = v[0];
    }
  }
  // Input gradient: correlation with the flipped kernel, then swish' and the affine.
  A v[2] = {0, 0};
  for (int64_t t = threadIdx.x; t < rows * W; t += kThreads) {
    const int64_t i = t / W, j = t % W;
    A grad_a = 0;
    for (int64_t ki = 0; ki < K; ++ki)
      for (int64_t kj = 0; kj < K; ++kj) grad_a += w[ki * K + kj] * g_tile[(i + 2 * P - ki) * Wp + j + 2 * P - kj];
    const int64_t index = (r0 + i) * W + j;
    const A xv = load<T, A>(xp, index);
    const A g = grad_a * core::swish_grad(xv * sc + sh);
    grad_x[p * H * W + index] = static_cast<T>(g * sc);
    v[0] += g;
    v[1] += g * (xv - m);
  }
  block_sum(v);
  if (threadIdx.x == 0) {
    tile_sum_g[tile_index] = v[0];
    tile_sum_gc[tile_index] = v[1];
  }
}

// Rows per depthwise tile so that `buffers` padded tiles fit in kTileBytes.
int64_t depthwise_tile_rows(const char* op, int64_t H, int64_t W, int64_t K, int64_t element_bytes,
                            int64_t buffers) {
  const int64_t P = K / 2, Wp = W + 2 * P;
  const int64_t rows = kTileBytes / (buffers * element_bytes * Wp) - 2 * P;
  TORCH_CHECK_VALUE(rows >= 1, op, ": planes of width ", W, " with a ", K, "x", K,
                    " kernel are too wide for the CUDA kernel's shared-memory tiles");
  return std::min(rows, H);
}

dim3 plane_grid(const at::Tensor& x) {
  const int64_t planes = x.size(0) * x.size(1);
  TORCH_CHECK_VALUE(planes < (int64_t(1) << 31), "cell op: N * C = ", planes, " exceeds the CUDA grid");
  return dim3(static_cast<unsigned>(planes));
}

#define NCP_CHECK_LAUNCH(op) C10_CUDA_KERNEL_LAUNCH_CHECK()
#define NCP_DISPATCH(x, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), name, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor> plane_moments_cuda(const at::Tensor& x) {
  const auto acc = check_activation("plane_moments", "x", x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor sum = plane_tensor(x, acc), sumsq = plane_tensor(x, acc);
  if (x.numel() == 0) return {sum.zero_(), sumsq.zero_()};
  NCP_DISPATCH(x, "plane_moments_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    plane_moments_kernel<scalar_t, A><<<plane_grid(x), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), x.size(2) * x.size(3), sum.data_ptr<A>(), sumsq.data_ptr<A>());
  });
  NCP_CHECK_LAUNCH("plane_moments");
  return {sum, sumsq};
}

at::Tensor plane_moments_backward_cuda(const at::Tensor& x, const at::Tensor& grad_sum, const at::Tensor& grad_sumsq) {
  const char* op = "plane_moments_backward";
  check_plane_moments_backward(op, x, grad_sum, grad_sumsq);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = at::empty_like(x);
  if (x.numel() == 0) return grad_x;
  NCP_DISPATCH(x, "plane_moments_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    plane_moments_backward_kernel<scalar_t, A><<<plane_grid(x), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), x.size(2) * x.size(3), grad_sum.data_ptr<A>(), grad_sumsq.data_ptr<A>(),
        grad_x.data_ptr<scalar_t>());
  });
  NCP_CHECK_LAUNCH(op);
  return grad_x;
}

at::Tensor bn_swish_cuda(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                         const at::Tensor& weight, const at::Tensor& bias) {
  check_bn_swish("bn_swish", x, mean, invstd, weight, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [scale, shift] = folded_affine(mean, invstd, weight, bias);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  NCP_DISPATCH(x, "bn_swish_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    bn_swish_kernel<scalar_t, A><<<plane_grid(x), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), x.size(1), x.size(2) * x.size(3), scale.data_ptr<A>(), shift.data_ptr<A>(),
        y.data_ptr<scalar_t>());
  });
  NCP_CHECK_LAUNCH("bn_swish");
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
    const at::Tensor& weight, const at::Tensor& bias) {
  const char* op = "bn_swish_backward";
  const auto acc = check_bn_swish_backward(op, grad_out, x, mean, invstd, weight, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [scale, shift] = folded_affine(mean, invstd, weight, bias);
  at::Tensor grad_x = at::empty_like(x), sum_g = plane_tensor(x, acc), sum_gc = plane_tensor(x, acc);
  if (x.numel() == 0) return {grad_x, sum_g.zero_(), sum_gc.zero_()};
  NCP_DISPATCH(x, "bn_swish_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    bn_swish_backward_kernel<scalar_t, A><<<plane_grid(x), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), x.size(1), x.size(2) * x.size(3),
        scale.data_ptr<A>(), shift.data_ptr<A>(), mean.data_ptr<A>(), grad_x.data_ptr<scalar_t>(),
        sum_g.data_ptr<A>(), sum_gc.data_ptr<A>());
  });
  NCP_CHECK_LAUNCH(op);
  return {grad_x, sum_g, sum_gc};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv_bn_swish_cuda(
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& bn_weight,
    const at::Tensor& bn_bias, const at::Tensor& conv_weight, const at::Tensor& conv_bias) {
  const char* op = "dwconv_bn_swish";
  const int64_t K = check_dwconv(op, x, mean, invstd, bn_weight, bn_bias, conv_weight, conv_bias);
  const auto acc = accumulation_type(x);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [scale, shift] = folded_affine(mean, invstd, bn_weight, bn_bias);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return {y, plane_tensor(x, acc).zero_(), plane_tensor(x, acc).zero_()};
  const int64_t H = x.size(2), W = x.size(3), P = K / 2;
  const int64_t element_bytes = acc == at::kDouble ? 8 : 4;
  const int64_t tile_rows = depthwise_tile_rows(op, H, W, K, element_bytes, 1);
  const int64_t tiles = (H + tile_rows - 1) / tile_rows;
  at::Tensor tile_sum = at::empty({x.size(0), x.size(1), tiles}, x.options().dtype(acc));
  at::Tensor tile_sumsq = at::empty_like(tile_sum);
  const dim3 grid(plane_grid(x).x, static_cast<unsigned>(tiles));
  const size_t shared = (tile_rows + 2 * P) * (W + 2 * P) * element_bytes;
  NCP_DISPATCH(x, "dwconv_bn_swish_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    dwconv_kernel<scalar_t, A><<<grid, kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), x.size(1), H, W, K, tile_rows, scale.data_ptr<A>(), shift.data_ptr<A>(),
        conv_weight.data_ptr<A>(), conv_bias.data_ptr<A>(), y.data_ptr<scalar_t>(), tile_sum.data_ptr<A>(),
        tile_sumsq.data_ptr<A>());
  });
  NCP_CHECK_LAUNCH(op);
  return {y, tile_sum.sum(2), tile_sumsq.sum(2)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_bn_swish_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& grad_sum, const at::Tensor& grad_sumsq, const at::Tensor& out,
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& bn_weight,
    const at::Tensor& bn_bias, const at::Tensor& conv_weight) {
  const char* op = "dwconv_bn_swish_backward";
  const int64_t K = check_dwconv_backward(op, grad_out, grad_sum, grad_sumsq, out, x, mean, invstd, bn_weight,
                                          bn_bias, conv_weight);
  const auto acc = accumulation_type(x);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = K / 2;
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
  const size_t shared = 2 * (tile_rows + 2 * P) * (W + 2 * P) * element_bytes;
  NCP_DISPATCH(x, "dwconv_bn_swish_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    dwconv_backward_kernel<scalar_t, A><<<grid, kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(
        grad_out.data_ptr<scalar_t>(), grad_sum.data_ptr<A>(), grad_sumsq.data_ptr<A>(), out.data_ptr<scalar_t>(),
        x.data_ptr<scalar_t>(), C, H, W, K, tile_rows, scale.data_ptr<A>(), shift.data_ptr<A>(),
        mean.data_ptr<A>(), conv_weight.data_ptr<A>(), grad_x.data_ptr<scalar_t>(), sum_g.data_ptr<A>(),
        sum_gc.data_ptr<A>(), grad_w.data_ptr<A>(), grad_b.data_ptr<A>());
  });
  NCP_CHECK_LAUNCH(op);
  return {grad_x, sum_g.sum(2), sum_gc.sum(2), grad_w.sum(2), grad_b.sum(2)};
}

at::Tensor bn_gate_residual_cuda(const at::Tensor& h, const at::Tensor& skip, const at::Tensor& mean,
                                 const at::Tensor& invstd, const at::Tensor& weight, const at::Tensor& bias,
                                 const at::Tensor& gate, double residual_scale) {
  check_gate("bn_gate_residual", h, skip, mean, invstd, weight, bias, gate);
  const c10::cuda::CUDAGuard guard(h.device());
  auto [scale, shift] = folded_affine(mean, invstd, weight, bias);
  auto [coef_a, coef_c] = gate_coefficients(scale, shift, gate, residual_scale);
  at::Tensor out = at::empty_like(h);
  if (h.numel() == 0) return out;
  NCP_DISPATCH(h, "bn_gate_residual_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    gate_residual_kernel<scalar_t, A><<<plane_grid(h), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        h.data_ptr<scalar_t>(), skip.data_ptr<scalar_t>(), h.size(2) * h.size(3), coef_a.data_ptr<A>(),
        coef_c.data_ptr<A>(), out.data_ptr<scalar_t>());
  });
  NCP_CHECK_LAUNCH("bn_gate_residual");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_gate_residual_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& mean, const at::Tensor& invstd,
    const at::Tensor& weight, const at::Tensor& gate, double residual_scale) {
  const char* op = "bn_gate_residual_backward";
  const auto acc = check_gate_backward(op, grad_out, h, mean, invstd, weight, gate);
  const c10::cuda::CUDAGuard guard(h.device());
  at::Tensor coef_a = gate_scale(invstd * weight, gate, residual_scale);
  at::Tensor grad_h = at::empty_like(h), sum_g = plane_tensor(h, acc), sum_gc = plane_tensor(h, acc);
  if (h.numel() == 0) return {grad_h, sum_g.zero_(), sum_gc.zero_()};
  NCP_DISPATCH(h, "bn_gate_residual_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    gate_residual_backward_kernel<scalar_t, A><<<plane_grid(h), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad_out.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), h.size(1), h.size(2) * h.size(3),
        coef_a.data_ptr<A>(), mean.data_ptr<A>(), grad_h.data_ptr<scalar_t>(), sum_g.data_ptr<A>(),
        sum_gc.data_ptr<A>());
  });
  NCP_CHECK_LAUNCH(op);
  return {grad_h, sum_g, sum_gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(ncpfast, CUDA, m) {
  m.impl("plane_moments", &plane_moments_cuda);
  m.impl("plane_moments_backward", &plane_moments_backward_cuda);
  m.impl("bn_swish", &bn_swish_cuda);
  m.impl("bn_swish_backward", &bn_swish_backward_cuda);
  m.impl("dwconv_bn_swish", &dwconv_bn_swish_cuda);
  m.impl("dwconv_bn_swish_backward", &dwconv_bn_swish_backward_cuda);
  m.impl("bn_gate_residual", &bn_gate_residual_cuda);
  m.impl("bn_gate_residual_backward", &bn_gate_residual_backward_cuda);
}

}  // namespace ops
}  // namespace ncpfast
