// CPU backend of ncpfast::mlp_log_ratio. Proposals go through the whole MLP
// in tiles of kTileRows rows: each layer is one GEMM (at::mm_out, BLAS) on the tile, with the
// bias and SiLU applied while the tile's activations are still in cache; no
// [B*M, hidden] activation is ever written to memory. Then each row's
// logsumexp from the [B, M] logits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../../core/swish.h"
#include "../mlp_log_ratio.h"

namespace ncpfast {
namespace ops {
namespace {

constexpr int64_t kTileRows = 256;  // a tile of 256 x 256 activations: 256 KB, in L2

// out[r, :] = swish(in[r, :] @ W^T + b) for a tile of rows (row-major).
// weight_t: W^T [K, H]. Inside at::parallel_for the GEMM runs single-threaded.
void linear_swish_tile(const float* in, int64_t rows, int64_t K, const at::Tensor& weight_t, const float* b, int64_t H,
                       float* out) {
  const auto options = at::TensorOptions().dtype(at::kFloat);
  at::Tensor out_tile = at::from_blob(out, {rows, H}, options);
  at::mm_out(out_tile, at::from_blob(const_cast<float*>(in), {rows, K}, options), weight_t);
  core::for_each_plane(0, rows, [&](int64_t r) NCPFAST_ALWAYS_INLINE {
    float* row = out + r * H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) row[h] = core::swish(row[h] + b[h]);
  });
}

std::tuple<at::Tensor, at::Tensor> mlp_log_ratio_cpu(const at::Tensor& z, at::TensorList weights,
                                                     at::TensorList biases) {
  const int64_t widest = check_mlp_inputs(z, weights, biases);
  const int64_t B = z.size(0), M = z.size(1), D = z.size(2), rows = B * M, L = weights.size();
  at::Tensor logits = at::empty({B, M}, z.options());
  at::Tensor row_lse = at::empty({B}, z.options());
  const float* zp = z.data_ptr<float>();
  std::vector<at::Tensor> weight_t;
  for (int64_t l = 0; l + 1 < L; ++l) weight_t.push_back(weights[l].t());
  float* lp = logits.data_ptr<float>();
  const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> ping(kTileRows * widest), pong(kTileRows * widest);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r0 = t * kTileRows, count = std::min(kTileRows, rows - r0);
      const float* in = zp + r0 * D;
      int64_t width = D;
      float* out = ping.data();
      for (int64_t l = 0; l + 1 < L; ++l) {
        const int64_t H = weights[l].size(0);
        linear_swish_tile(in, count, width, weight_t[l], biases[l].data_ptr<float>(), H, out);
        in = out;
        width = H;
        out = out == ping.data() ? pong.data() : ping.data();
      }
      const float* w_last = weights[L - 1].data_ptr<float>();
      const float b_last = biases[L - 1].data_ptr<float>()[0];
      for (int64_t r = 0; r < count; ++r) {
        float acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < width; ++k) acc += in[r * width + k] * w_last[k];
        lp[r0 + r] = acc + b_last;
      }
    }
  });
  float* rl = row_lse.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* row = lp + b * M;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t m = 0; m < M; ++m) mx = std::max(mx, row[m]);
      if (!std::isfinite(mx)) {
        rl[b] = mx;
        continue;
      }
      double s = 0;
      for (int64_t m = 0; m < M; ++m) s += std::exp(static_cast<double>(row[m] - mx));
      rl[b] = mx + static_cast<float>(std::log(s));
    }
  });
  return {logits, row_lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(ncpfast, CPU, m) { m.impl("mlp_log_ratio", &mlp_log_ratio_cpu); }

}  // namespace ops
}  // namespace ncpfast
