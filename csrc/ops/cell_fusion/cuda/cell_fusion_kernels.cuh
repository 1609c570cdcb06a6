// The CUDA kernels of the fused residual-cell ops, torch-free: the extension
// (cell_fusion_cuda.cu) launches them on tensors, and the native emulated test
// (csrc/tests/test_cell_cuda_emulated.cpp) runs them on the CPU emulation of
// the CUDA execution model against the CPU cores of csrc/core/cell_fusion.h.
//
// Elementwise ops run one block per (image, channel) plane, so the plane's
// reductions are a block reduction and need no atomics (deterministic). The
// depthwise conv runs one block per (plane, tile of rows): the tile's padded
// input rows, activated once (BN-apply + swish), sit in shared memory; per-tile
// partial reductions are summed over tiles afterwards. T is the storage type,
// A the arithmetic type (float for float16/bfloat16/float32 storage).
#pragma once

#include <cstddef>
#include <cstdint>

#include "../../../core/cuda_compat.h"
#include "../../../core/swish.h"

namespace ncpfast {
namespace ops {
namespace cell_kernels {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Sum over the block of each of the NV values per thread; every thread gets the totals.
template <typename T, int NV>
__device__ void block_sum(T (&v)[NV]) {
  NCPFAST_STATIC_SHARED(T, partial, [NV][kWarps]);
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
    for (int w = 0; w < kWarps; ++w) total += partial[k][w];
    v[k] = total;
  }
  __syncthreads();  // partial may be reused by the next call
}

template <typename T, typename A>
__device__ __forceinline__ A load(const T* p, int64_t i) {
  return static_cast<A>(p[i]);
}

// ------------------------------------------------------------ elementwise ops

// Backward through a = swish(u), u = x * scale + shift, for one element:
// given grad_a, stores grad_x = g * scale (g = dL/du, recomputed from x) and
// adds g and g * (x - mean) to v, the batch-norm statistics' share (the CPU
// core's bn_swish_backward_plane, per element).
template <typename T, typename A>
__device__ __forceinline__ void swish_affine_backward(A grad_a, A xv, A sc, A sh, A m, T& grad_x, A (&v)[2]) {
  const A g = grad_a * core::swish_grad(xv * sc + sh);
  grad_x = static_cast<T>(g * sc);
  v[0] += g;
  v[1] += g * (xv - m);
}

// The moments accumulate in double, as on the CPU (core::plane_moments): in
// float, the sum of squares of values with a large mean (x = 1000 + noise) is
// off by many float ulps, and the variance, E[x^2] - mean^2, lives in its last
// bits. Each output is then one rounding of the exact sum.
template <typename T, typename A>
__global__ void plane_moments_kernel(const T* x, int64_t HW, A* sum, A* sumsq) {
  const int64_t p = blockIdx.x;
  double v[2] = {0, 0};
  for (int64_t i = threadIdx.x; i < HW; i += kThreads) {
    const double value = static_cast<double>(load<T, A>(x, p * HW + i));
    v[0] += value;
    v[1] += value * value;
  }
  block_sum(v);
  if (threadIdx.x == 0) {
    sum[p] = static_cast<A>(v[0]);
    sumsq[p] = static_cast<A>(v[1]);
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
  for (int64_t i = threadIdx.x; i < HW; i += kThreads)
    swish_affine_backward(load<T, A>(grad_y, p * HW + i), load<T, A>(x, p * HW + i), sc, sh, m, grad_x[p * HW + i], v);
  block_sum(v);
  if (threadIdx.x == 0) {
    sum_g[p] = v[0];
    sum_gc[p] = v[1];
  }
}

template <typename T, typename A>
__global__ void gate_residual_kernel(const T* h, const T* skip, int64_t HW, const A* coef_a, const A* coef_c, T* out) {
  const int64_t p = blockIdx.x;
  const A a = coef_a[p], c = coef_c[p];
  for (int64_t i = threadIdx.x; i < HW; i += kThreads)
    out[p * HW + i] = static_cast<T>(load<T, A>(skip, p * HW + i) + a * load<T, A>(h, p * HW + i) + c);
}

template <typename T, typename A>
__global__ void gate_residual_backward_kernel(const T* grad_out, const T* h, int64_t C, int64_t HW, const A* coef_a,
                                              const A* mean, T* grad_h, A* sum_g, A* sum_gc) {
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

// Shared memory one depthwise block may use for its padded tiles (below the 48
// KiB a block may use without opting in, with room for the backward's partial
// sums and block_sum's static array).
constexpr int64_t kDwconvTileBytes = 32 * 1024;
// The largest gridDim.y of a launch: the depthwise kernels' tiles per plane.
constexpr int64_t kMaxGridY = 65535;

// Output rows per depthwise tile so that `buffers` padded tiles (rows + 2P of
// W + 2P values of `element_bytes`) fit in kDwconvTileBytes, at most H; 0 when
// not one row fits (the plane is too wide). The host code launches with these
// tiles, and the emulated tests drive the kernels through this function too.
inline int64_t dwconv_tile_rows(int64_t H, int64_t W, int64_t K, int64_t element_bytes, int64_t buffers) {
  const int64_t P = K / 2, Wp = W + 2 * P;
  const int64_t rows = kDwconvTileBytes / (buffers * element_bytes * Wp) - 2 * P;
  return rows < 1 ? 0 : (rows < H ? rows : H);
}

// Dynamic shared memory of the depthwise kernels for tiles of `tile_rows`
// output rows of width W, kernel K, arithmetic type of `element_bytes`: the
// forward holds one padded tile, the backward two and the per-warp partial
// sums of the K * K + 1 weight and bias gradients.
inline size_t dwconv_shared_bytes(int64_t tile_rows, int64_t W, int64_t K, int64_t element_bytes) {
  return static_cast<size_t>((tile_rows + 2 * (K / 2)) * (W + 2 * (K / 2)) * element_bytes);
}
inline size_t dwconv_backward_shared_bytes(int64_t tile_rows, int64_t W, int64_t K, int64_t element_bytes) {
  return 2 * dwconv_shared_bytes(tile_rows, W, K, element_bytes) +
         static_cast<size_t>((K * K + 1) * kWarps * element_bytes);
}

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
__global__ void dwconv_kernel(const T* x, int64_t C, int64_t H, int64_t W, int64_t K, int64_t tile_rows, const A* scale,
                              const A* shift, const A* weight, const A* bias, T* y, A* tile_sum, A* tile_sumsq) {
  NCPFAST_DYNAMIC_SHARED(unsigned char, shared_bytes);
  A* tile = reinterpret_cast<A*>(shared_bytes);
  const int64_t p = blockIdx.x, c = p % C, r0 = blockIdx.y * tile_rows, P = K / 2, Wp = W + 2 * P;
  const int64_t rows = min(tile_rows, H - r0);
  const T* xp = x + p * H * W;
  const A sc = scale[c], sh = shift[c];
  fill_tile(tile, r0, rows, H, W, P,
            [&](int64_t i, int64_t j) { return core::swish(load<T, A>(xp, i * W + j) * sc + sh); });
  __syncthreads();
  const A* w = weight + c * K * K;
  double v[2] = {0, 0};  // the moments in double, as in plane_moments_kernel
  for (int64_t t = threadIdx.x; t < rows * W; t += kThreads) {
    const int64_t i = t / W, j = t % W;
    A acc = bias[c];
    for (int64_t ki = 0; ki < K; ++ki)
      for (int64_t kj = 0; kj < K; ++kj) acc += w[ki * K + kj] * tile[(i + ki) * Wp + j + kj];
    const T stored = static_cast<T>(acc);
    y[p * H * W + (r0 + i) * W + j] = stored;
    const double value = static_cast<double>(static_cast<A>(stored));  // the moments of what the next op reads
    v[0] += value;
    v[1] += value * value;
  }
  block_sum(v);
  if (threadIdx.x == 0) {
    tile_sum[p * gridDim.y + blockIdx.y] = static_cast<A>(v[0]);
    tile_sumsq[p * gridDim.y + blockIdx.y] = static_cast<A>(v[1]);
  }
}

template <typename T, typename A>
__global__ void dwconv_backward_kernel(const T* grad_y, const A* grad_sum, const A* grad_sumsq, const T* y, const T* x,
                                       int64_t C, int64_t H, int64_t W, int64_t K, int64_t tile_rows, const A* scale,
                                       const A* shift, const A* mean, const A* weight, T* grad_x, A* tile_sum_g,
                                       A* tile_sum_gc, A* tile_grad_w, A* tile_grad_b) {
  NCPFAST_DYNAMIC_SHARED(unsigned char, shared_bytes);
  const int64_t p = blockIdx.x, c = p % C, r0 = blockIdx.y * tile_rows, P = K / 2, Wp = W + 2 * P;
  const int64_t rows = min(tile_rows, H - r0), tile_size = (tile_rows + 2 * P) * Wp;
  const int64_t tile_index = p * gridDim.y + blockIdx.y;
  A* a_tile = reinterpret_cast<A*>(shared_bytes);
  A* g_tile = a_tile + tile_size;
  A* warp_partials = g_tile + tile_size;  // [K * K + 1][kWarps]
  const T* xp = x + p * H * W;
  const T* gyp = grad_y + p * H * W;
  const T* yp = y + p * H * W;
  const A sc = scale[c], sh = shift[c], m = mean[c], gs = grad_sum[p], gq = grad_sumsq[p];
  fill_tile(a_tile, r0, rows, H, W, P,
            [&](int64_t i, int64_t j) { return core::swish(load<T, A>(xp, i * W + j) * sc + sh); });
  // The effective output gradient, including the moments' share.
  fill_tile(g_tile, r0, rows, H, W, P, [&](int64_t i, int64_t j) {
    return load<T, A>(gyp, i * W + j) + gs + A(2) * gq * load<T, A>(yp, i * W + j);
  });
  __syncthreads();
  const A* w = weight + c * K * K;
  // Weight and bias gradients from this tile's output rows r0 .. r0 + rows:
  // per tap, a warp reduction into warp_partials; one barrier for all taps
  // (not two per tap, as a block reduction per tap would need).
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t tap = 0; tap <= K * K; ++tap) {  // tap == K * K: the bias
    const int64_t ki = tap / K, kj = tap % K;
    A v = 0;
    for (int64_t t = threadIdx.x; t < rows * W; t += kThreads) {
      const int64_t i = t / W, j = t % W;
      const A g = g_tile[(i + P) * Wp + j + P];
      v += tap == K * K ? g : g * a_tile[(i + ki) * Wp + j + kj];
    }
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) warp_partials[tap * kWarps + warp] = v;
  }
  __syncthreads();
  for (int64_t tap = threadIdx.x; tap <= K * K; tap += kThreads) {
    A total = 0;
    for (int k = 0; k < kWarps; ++k) total += warp_partials[tap * kWarps + k];
    if (tap == K * K) tile_grad_b[tile_index] = total;
    else tile_grad_w[tile_index * K * K + tap] = total;
  }
  // Input gradient: correlation with the flipped kernel, then swish' and the affine.
  A v[2] = {0, 0};
  for (int64_t t = threadIdx.x; t < rows * W; t += kThreads) {
    const int64_t i = t / W, j = t % W;
    A grad_a = 0;
    for (int64_t ki = 0; ki < K; ++ki)
      for (int64_t kj = 0; kj < K; ++kj) grad_a += w[ki * K + kj] * g_tile[(i + 2 * P - ki) * Wp + j + 2 * P - kj];
    const int64_t index = (r0 + i) * W + j;
    swish_affine_backward(grad_a, load<T, A>(xp, index), sc, sh, m, grad_x[p * H * W + index], v);
  }
  block_sum(v);
  if (threadIdx.x == 0) {
    tile_sum_g[tile_index] = v[0];
    tile_sum_gc[tile_index] = v[1];
  }
}

}  // namespace cell_kernels
}  // namespace ops
}  // namespace ncpfast
