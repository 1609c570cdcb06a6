// Per-plane CPU routines of the fused residual-cell ops (torch-free).
//
// A "plane" is one (image, channel) slice of an NCHW tensor: H*W contiguous
// values that share one channel's batch-norm affine. The ops run planes in
// parallel and each routine below handles one plane, writing its reductions
// to the caller (per-plane partial sums, reduced over the batch afterwards so
// results do not depend on the thread count).
//
// Notation: the input transform of a fused op is u = x * scale + shift with
// scale = invstd * gamma and shift = beta - mean * scale (batch norm folded
// into an affine), followed by a = swish(u).
#pragma once

#include <cstdint>

#include "swish.h"

namespace ncpfast {
namespace core {

// Sum and sum of squares of n values, accumulated in double.
template <typename T>
NCPFAST_HD void plane_moments(const T* x, int64_t n, double& sum, double& sumsq) {
  double s = 0, q = 0;
#pragma omp simd reduction(+ : s, q)
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    s += v;
    q += v * v;
  }
  sum = s;
  sumsq = q;
}

// grad_x = grad_sum + 2 x grad_sumsq: the backward of plane_moments.
template <typename T>
NCPFAST_HD void plane_moments_backward_plane(const T* x, int64_t n, T grad_sum, T grad_sumsq, T* grad_x) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) grad_x[i] = grad_sum + T(2) * grad_sumsq * x[i];
}

template <typename T>
NCPFAST_HD void bn_swish_plane(const T* x, int64_t n, T scale, T shift, T* y) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = swish(x[i] * scale + shift);
}

// Recomputes u from x (the BN output is never stored), then
// sum_g = sum g_u, sum_gc = sum g_u (x - mean) and, with kWriteGrad,
// grad_x = g_u * scale. Without it (grad_x unused) it is the first of
// bn_swish_batch_stats's two backward passes; see bn_swish_grad_apply_plane.
template <bool kWriteGrad = true, typename T>
NCPFAST_HD void bn_swish_backward_plane(const T* grad_y, const T* x, int64_t n, T scale, T shift, T mean, T* grad_x,
                                        double& sum_g, double& sum_gc) {
  double s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad_y[i] * swish_grad(x[i] * scale + shift);
    if constexpr (kWriteGrad) grad_x[i] = g * scale;
    s1 += g;
    s2 += g * (x[i] - mean);
  }
  sum_g = s1;
  sum_gc = s2;
}

// bn_swish_batch_stats's backward in two passes over (grad_y, x), with g_u =
// grad_y * swish'(u) recomputed in each instead of stored:
//   1. the sums of bn_swish_backward_plane<false>, without grad_x;
//   2. this: grad_x = g_u * scale + alpha + beta * x, where the per-channel
//      alpha + beta * x is the gradient through the batch statistics (which
//      needs the sums of every plane of the channel, hence the first pass).
template <typename T>
NCPFAST_HD void bn_swish_grad_apply_plane(const T* grad_y, const T* x, int64_t n, T scale, T shift, T alpha, T beta,
                                          T* grad_x) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i)
    grad_x[i] = grad_y[i] * swish_grad(x[i] * scale + shift) * scale + alpha + beta * x[i];
}

// The geometry of a stride-1 'same' depthwise conv on one plane: K odd,
// P = K / 2, padded row length Wp = W + 2P. Padded buffers hold
// (H + 2P) * Wp values whose border stays zero.
struct DepthwisePlane {
  int64_t H, W, K;
  NCPFAST_HD int64_t pad() const { return K / 2; }
  NCPFAST_HD int64_t padded_width() const { return W + 2 * pad(); }
  NCPFAST_HD int64_t padded_size() const { return (H + 2 * pad()) * padded_width(); }
};

// Writes swish(x * scale + shift) into the interior of the padded buffer.
template <typename T>
NCPFAST_HD void fill_padded_activation(const DepthwisePlane& g, const T* x, T scale, T shift, T* padded) {
  const int64_t P = g.pad(), Wp = g.padded_width();
  for (int64_t i = 0; i < g.H; ++i) bn_swish_plane(x + i * g.W, g.W, scale, shift, padded + (i + P) * Wp + P);
}

// Outputs per register block: one AVX2 vector of floats. Blocks keep all K*K
// taps of 8 outputs in registers instead of re-reading and re-writing the
// output row once per tap.
constexpr int64_t kDepthwiseBlock = 8;

// out[j] = bias + sum_{ki, kj} w[ki K + kj] * rows[ki * Wp + j + kj], j < W:
// one output row of a stride-1 correlation over a padded input.
template <typename T>
NCPFAST_HD void correlate_row(const T* rows, int64_t Wp, int64_t K, const T* w, T bias, int64_t W, T* out) {
  int64_t j0 = 0;
  for (; j0 + kDepthwiseBlock <= W; j0 += kDepthwiseBlock) {
    T acc[kDepthwiseBlock];
    for (int64_t jj = 0; jj < kDepthwiseBlock; ++jj) acc[jj] = bias;
    for (int64_t ki = 0; ki < K; ++ki) {
      const T* row = rows + ki * Wp + j0;
      for (int64_t kj = 0; kj < K; ++kj) {
        const T wv = w[ki * K + kj];
#pragma omp simd
        for (int64_t jj = 0; jj < kDepthwiseBlock; ++jj) acc[jj] += wv * row[kj + jj];
      }
    }
    for (int64_t jj = 0; jj < kDepthwiseBlock; ++jj) out[j0 + jj] = acc[jj];
  }
  for (int64_t j = j0; j < W; ++j) {  // the tail of the row (and rows narrower than a block)
    T acc = bias;
    for (int64_t ki = 0; ki < K; ++ki)
      for (int64_t kj = 0; kj < K; ++kj) acc += w[ki * K + kj] * rows[ki * Wp + j + kj];
    out[j] = acc;
  }
}

// Planes narrower than a register block (W < kDepthwiseBlock, e.g. the 4x4
// maps of a model's coarsest scale) would leave correlate_row to its scalar
// tail. Here the padded plane is read flattened instead: output (i, j) is
// flat[i * Wp + j] of a 1-D correlation with taps at offsets ki * Wp + kj, so
// the inner loop runs over several rows at once (kFlatChunk values at most,
// in registers or L1); the Wp - W values between rows are computed and dropped.
constexpr int64_t kFlatChunk = 128;

template <typename T>
NCPFAST_HD void correlate_rows_flat(const T* padded, int64_t Wp, int64_t K, const T* w, T bias, int64_t H, int64_t W,
                                    T* out) {
  const int64_t rows_per_chunk = Wp < kFlatChunk ? kFlatChunk / Wp : 1;
  T acc[kFlatChunk];
  for (int64_t i0 = 0; i0 < H; i0 += rows_per_chunk) {
    const int64_t rows = H - i0 < rows_per_chunk ? H - i0 : rows_per_chunk;
    const int64_t L = (rows - 1) * Wp + W;  // <= kFlatChunk
    for (int64_t k = 0; k < L; ++k) acc[k] = bias;
    for (int64_t ki = 0; ki < K; ++ki) {
      for (int64_t kj = 0; kj < K; ++kj) {
        const T wv = w[ki * K + kj];
        const T* src = padded + (i0 + ki) * Wp + kj;
#pragma omp simd
        for (int64_t k = 0; k < L; ++k) acc[k] += wv * src[k];
      }
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < W; ++j) out[(i0 + r) * W + j] = acc[r * Wp + j];
  }
}

// out (H x W) = bias + the stride-1 correlation of a padded plane with w (K x K).
template <typename T>
NCPFAST_HD void correlate_plane(const DepthwisePlane& g, const T* padded, const T* w, T bias, T* out) {
  const int64_t Wp = g.padded_width();
  if (g.W < kDepthwiseBlock) {
    correlate_rows_flat(padded, Wp, g.K, w, bias, g.H, g.W, out);
    return;
  }
  for (int64_t i = 0; i < g.H; ++i) correlate_row(padded + i * Wp, Wp, g.K, w, bias, g.W, out + i * g.W);
}

// y = depthwise_conv(swish(x * scale + shift), w) + bias, and the moments of y.
// padded: workspace of g.padded_size() with a zero border.
template <typename T>
NCPFAST_HD void bn_swish_dwconv_plane(const DepthwisePlane& g, const T* x, T scale, T shift, const T* w, T bias,
                                      T* padded, T* y, double& sum, double& sumsq) {
  fill_padded_activation(g, x, scale, shift, padded);
  correlate_plane(g, padded, w, bias, y);
  plane_moments(y, g.H * g.W, sum, sumsq);
}

// grad_w of bn_swish_dwconv_backward_plane for planes at least a register
// block wide, accumulated per lane (tap_acc[tap][lane]) so the inner loop is
// a plain vector FMA.
template <typename T>
NCPFAST_HD void dwconv_weight_grad_blocked(const DepthwisePlane& g, const T* padded_a, const T* padded_g, T* tap_acc,
                                           T* grad_w) {
  const int64_t H = g.H, W = g.W, K = g.K, P = g.pad(), Wp = g.padded_width(), KK = K * K;
  for (int64_t t = 0; t < KK * kDepthwiseBlock; ++t) tap_acc[t] = 0;
  for (int64_t i = 0; i < H; ++i) {
    const T* gr = padded_g + (i + P) * Wp + P;
    int64_t j0 = 0;
    for (; j0 + kDepthwiseBlock <= W; j0 += kDepthwiseBlock) {
      for (int64_t ki = 0; ki < K; ++ki) {
        const T* ar = padded_a + (i + ki) * Wp + j0;
        for (int64_t kj = 0; kj < K; ++kj) {
          T* acc = tap_acc + (ki * K + kj) * kDepthwiseBlock;
#pragma omp simd
          for (int64_t jj = 0; jj < kDepthwiseBlock; ++jj) acc[jj] += gr[j0 + jj] * ar[kj + jj];
        }
      }
    }
    for (int64_t j = j0; j < W; ++j)
      for (int64_t ki = 0; ki < K; ++ki)
        for (int64_t kj = 0; kj < K; ++kj)
          tap_acc[(ki * K + kj) * kDepthwiseBlock] += gr[j] * padded_a[(i + ki) * Wp + j + kj];
  }
  for (int64_t t = 0; t < KK; ++t) {
    T total = 0;
    for (int64_t jj = 0; jj < kDepthwiseBlock; ++jj) total += tap_acc[t * kDepthwiseBlock + jj];
    grad_w[t] = total;
  }
}

// Backward of bn_swish_dwconv_plane for one plane.
//   grad_y_eff = grad_y + grad_sum + 2 y grad_sumsq   (the moments' share)
//   grad_a     = correlation of the padded grad_y_eff with the flipped kernel
//   grad_w     = sum over positions of grad_y_eff * shifted a     (K*K values)
//   then through swish and the affine as in bn_swish_backward_plane.
// Workspaces: padded_a, padded_g of g.padded_size() with zero borders, grad_a of H*W, flipped of K*K and
// tap_acc of K*K*kDepthwiseBlock.
template <typename T>
NCPFAST_HD void bn_swish_dwconv_backward_plane(const DepthwisePlane& g, const T* grad_y, T grad_sum, T grad_sumsq,
                                               const T* y, const T* x, T scale, T shift, T mean, const T* w,
                                               T* padded_a, T* padded_g, T* grad_a, T* flipped, T* tap_acc, T* grad_x,
                                               double& sum_g, double& sum_gc, T* grad_w, double& grad_bias) {
  const int64_t H = g.H, W = g.W, K = g.K, P = g.pad(), Wp = g.padded_width(), KK = K * K;
  fill_padded_activation(g, x, scale, shift, padded_a);
  double gb = 0;
  for (int64_t i = 0; i < H; ++i) {
    T* dst = padded_g + (i + P) * Wp + P;
    const T* gy = grad_y + i * W;
    const T* yy = y + i * W;
#pragma omp simd reduction(+ : gb)
    for (int64_t j = 0; j < W; ++j) {
      dst[j] = gy[j] + grad_sum + T(2) * yy[j] * grad_sumsq;
      gb += dst[j];
    }
  }
  grad_bias = gb;
  // grad_w[tap] = sum_{i, j} g[i][j] a_pad[i + ki][j + kj].
  if (W < kDepthwiseBlock) {
    // Narrow planes, flattened as in correlate_rows_flat: the gradient read at
    // row stride Wp has zeros between rows (the padded border), so each tap is
    // one dot product over (H - 1) * Wp + W values.
    const T* gflat = padded_g + P * Wp + P;
    const int64_t L = (H - 1) * Wp + W;
    for (int64_t ki = 0; ki < K; ++ki) {
      for (int64_t kj = 0; kj < K; ++kj) {
        const T* af = padded_a + ki * Wp + kj;
        T total = 0;
#pragma omp simd reduction(+ : total)
        for (int64_t k = 0; k < L; ++k) total += gflat[k] * af[k];
        grad_w[ki * K + kj] = total;
      }
    }
  } else {
    dwconv_weight_grad_blocked(g, padded_a, padded_g, tap_acc, grad_w);
  }
  // grad_a[r][c] = sum_{ki, kj} w[ki][kj] g[r - ki + P][c - kj + P]: a
  // correlation of the padded gradient with the kernel flipped in both axes.
  for (int64_t t = 0; t < KK; ++t) flipped[t] = w[KK - 1 - t];
  correlate_plane(g, padded_g, flipped, T(0), grad_a);
  // grad_a is the gradient with respect to a = swish(u): the same role grad_y
  // plays in bn_swish_backward_plane.
  bn_swish_backward_plane(grad_a, x, H * W, scale, shift, mean, grad_x, sum_g, sum_gc);
}

// out = skip + a * h + c, where a = residual_scale * gate * scale and
// c = residual_scale * gate * shift (the cell's BN, SE gate and 0.1 in one pass).
template <typename T>
NCPFAST_HD void gate_residual_plane(const T* h, const T* skip, int64_t n, T a, T c, T* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = skip[i] + a * h[i] + c;
}

// grad_h = a * grad_out, sum_g = sum grad_out, sum_gc = sum grad_out (h - mean).
template <typename T>
NCPFAST_HD void gate_residual_backward_plane(const T* grad_out, const T* h, int64_t n, T a, T mean, T* grad_h,
                                             double& sum_g, double& sum_gc) {
  double s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t i = 0; i < n; ++i) {
    grad_h[i] = a * grad_out[i];
    s1 += grad_out[i];
    s2 += grad_out[i] * (h[i] - mean);
  }
  sum_g = s1;
  sum_gc = s2;
}

// --- Channels-last (NHWC) images --------------------------------------------
// In NHWC an image is H*W "rows" (pixels) of C contiguous channel values, so a
// plane's values are C apart. These routines handle one image: per-channel
// parameters are arrays of C, loops run over the channels of a row (the vector
// dimension), and the per-plane reductions of the image accumulate in double
// arrays of C that the caller provides. They compute exactly what the plane
// routines above compute on the same values, in another order.

NCPFAST_HD void zero_channels(int64_t C, double* a, double* b) {
  for (int64_t c = 0; c < C; ++c) a[c] = b[c] = 0;
}

// sum[c], sumsq[c] = plane_moments of channel c.
template <typename T>
NCPFAST_HD void channel_moments(const T* x, int64_t rows, int64_t C, double* sum, double* sumsq) {
  zero_channels(C, sum, sumsq);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const double v = xr[c];
      sum[c] += v;
      sumsq[c] += v * v;
    }
  }
}

template <typename T>
NCPFAST_HD void channel_moments_backward(const T* x, int64_t rows, int64_t C, const T* grad_sum, const T* grad_sumsq,
                                         T* grad_x) {
  for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) grad_x[r * C + c] = grad_sum[c] + T(2) * grad_sumsq[c] * x[r * C + c];
  }
}

template <typename T>
NCPFAST_HD void bn_swish_channels(const T* x, int64_t rows, int64_t C, const T* scale, const T* shift, T* y) {
  for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) y[r * C + c] = swish(x[r * C + c] * scale[c] + shift[c]);
  }
}

// bn_swish_backward_plane<kWriteGrad> for every channel of an image.
template <bool kWriteGrad = true, typename T>
NCPFAST_HD void bn_swish_backward_channels(const T* grad_y, const T* x, int64_t rows, int64_t C, const T* scale,
                                           const T* shift, const T* mean, T* grad_x, double* sum_g, double* sum_gc) {
  zero_channels(C, sum_g, sum_gc);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T g = grad_y[o + c] * swish_grad(x[o + c] * scale[c] + shift[c]);
      if constexpr (kWriteGrad) grad_x[o + c] = g * scale[c];
      sum_g[c] += g;
      sum_gc[c] += g * (x[o + c] - mean[c]);
    }
  }
}

template <typename T>
NCPFAST_HD void bn_swish_grad_apply_channels(const T* grad_y, const T* x, int64_t rows, int64_t C, const T* scale,
                                             const T* shift, const T* alpha, const T* beta, T* grad_x) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c)
      grad_x[o + c] =
          grad_y[o + c] * swish_grad(x[o + c] * scale[c] + shift[c]) * scale[c] + alpha[c] + beta[c] * x[o + c];
  }
}

// gate_residual_plane with per-channel coefficients a[c], cc[c] of one image.
template <typename T>
NCPFAST_HD void gate_residual_channels(const T* h, const T* skip, int64_t rows, int64_t C, const T* a, const T* cc,
                                       T* out) {
  for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) out[r * C + c] = skip[r * C + c] + a[c] * h[r * C + c] + cc[c];
  }
}

template <typename T>
NCPFAST_HD void gate_residual_backward_channels(const T* grad_out, const T* h, int64_t rows, int64_t C, const T* a,
                                                const T* mean, T* grad_h, double* sum_g, double* sum_gc) {
  zero_channels(C, sum_g, sum_gc);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      grad_h[o + c] = a[c] * grad_out[o + c];
      sum_g[c] += grad_out[o + c];
      sum_gc[c] += grad_out[o + c] * (h[o + c] - mean[c]);
    }
  }
}

}  // namespace core
}  // namespace ncpfast
