// CUDA backend of ncpfast::mlp_log_ratio. One block runs a tile of proposals
// through the whole MLP: the tile's hidden activations live in shared memory
// (two buffers, ping-pong), each thread owns output units and keeps one
// accumulator per tile row in registers, weights are read transposed
// ([in, out], so a warp's loads are coalesced) from global memory / L2. Only
// the logits [B, M] are written; the row logsumexp follows from them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "../../../core/swish.h"
#include "../mlp_log_ratio.h"

namespace ncpfast {
namespace ops {
namespace {

constexpr int kThreads = 256;
constexpr int kTileRows = 16;
constexpr int kMaxLayers = 8;

struct Layers {
  const float* weight_t[kMaxLayers];  // [in, out], row-major
  const float* bias[kMaxLayers];
  int in[kMaxLayers], out[kMaxLayers];
  int count;
};

template <typename T>
__global__ void mlp_log_ratio_kernel(const T* z, int64_t rows, Layers layers, int widest, float* logits) {
  extern __shared__ __align__(16) float shared[];
  float* buffers[2] = {shared, shared + kTileRows * widest};
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int count = static_cast<int>(rows - r0 < kTileRows ? rows - r0 : kTileRows);
  const int D = layers.in[0];
  // Layer 0 reads the proposals straight from global memory.
  for (int l = 0; l + 1 < layers.count; ++l) {
    const int K = layers.in[l], H = layers.out[l];
    const float* in = l == 0 ? nullptr : buffers[(l - 1) % 2];
    float* out = buffers[l % 2];
    for (int h = threadIdx.x; h < H; h += kThreads) {
      float acc[kTileRows];
#pragma unroll
      for (int r = 0; r < kTileRows; ++r) acc[r] = 0.f;
      for (int k = 0; k < K; ++k) {
        const float w = layers.weight_t[l][k * H + h];
#pragma unroll
        for (int r = 0; r < kTileRows; ++r) {
          if (r < count) {
            const float a = l == 0 ? static_cast<float>(z[(r0 + r) * D + k]) : in[r * K + k];
            acc[r] += a * w;
          }
        }
      }
      const float b = layers.bias[l][h];
#pragma unroll
      for (int r = 0; r < kTileRows; ++r)
        if (r < count) out[r * H + h] = core::swish(acc[r] + b);
    }
    __syncthreads();
  }
  // The last layer: one logit per row, a warp per row.
  const int last = layers.count - 1, K = layers.in[last];
  const float* in = buffers[(last - 1) % 2];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < count; r += kThreads / 32) {
    float acc = 0.f;
    for (int k = lane; k < K; k += 32) acc += in[r * K + k] * layers.weight_t[last][k];
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) logits[r0 + r] = acc + layers.bias[last][0];
  }
}

std::tuple<at::Tensor, at::Tensor> mlp_log_ratio_cuda(const at::Tensor& z, at::TensorList weights,
                                                      at::TensorList biases) {
  const int64_t widest = check_mlp_inputs(z, weights, biases);
  TORCH_CHECK_VALUE(static_cast<int64_t>(weights.size()) <= kMaxLayers, "mlp_log_ratio: at most ", kMaxLayers,
                    " layers on CUDA, got ", weights.size());
  const size_t shared = 2 * kTileRows * widest * sizeof(float);
  TORCH_CHECK_VALUE(shared <= 48 * 1024, "mlp_log_ratio: hidden width ", widest,
                    " exceeds the CUDA kernel's shared-memory tile (at most ", 48 * 1024 / (8 * kTileRows), ")");
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t B = z.size(0), M = z.size(1), rows = B * M;
  at::Tensor logits = at::empty({B, M}, z.options().dtype(at::kFloat));
  if (rows == 0) return {logits, at::full({B}, -std::numeric_limits<float>::infinity(), logits.options())};
  std::vector<at::Tensor> transposed;  // kept alive until the launch is queued
  Layers layers{};
  layers.count = static_cast<int>(weights.size());
  for (size_t l = 0; l < weights.size(); ++l) {
    transposed.push_back(weights[l].t().contiguous());
    layers.weight_t[l] = transposed.back().data_ptr<float>();
    layers.bias[l] = biases[l].data_ptr<float>();
    layers.in[l] = static_cast<int>(weights[l].size(1));
    layers.out[l] = static_cast<int>(weights[l].size(0));
  }
  const int64_t blocks = (rows + kTileRows - 1) / kTileRows;
  TORCH_CHECK_VALUE(blocks < (int64_t(1) << 31), "mlp_log_ratio: B * M = ", rows, " exceeds the CUDA grid");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "mlp_log_ratio_cuda", [&] {
    mlp_log_ratio_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, shared,
                                     at::cuda::getCurrentCUDAStream()>>>(
        z.data_ptr<scalar_t>(), rows, layers, static_cast<int>(widest), logits.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {logits, at::logsumexp(logits, {1})};
}

}  // namespace

TORCH_LIBRARY_IMPL(ncpfast, CUDA, m) { m.impl("mlp_log_ratio", &mlp_log_ratio_cuda); }

}  // namespace ops
}  // namespace ncpfast
