// The CUDA kernel of ncpfast::mlp_log_ratio, torch-free: the extension
// (mlp_log_ratio_cuda.cu) launches it on tensors, and the native emulated test
// (csrc/tests/test_mlp_cuda_emulated.cpp) runs it on the CPU emulation of the
// CUDA execution model against a double-precision MLP.
//
// One block runs a tile of proposals through the whole MLP: the tile's hidden
// activations live in shared memory (two buffers, ping-pong), each thread owns
// output units and keeps one accumulator per tile row in registers, weights
// are read transposed ([in, out], so a warp's loads are coalesced) from
// global memory / L2. Only the logits [B, M] are written.
#pragma once

#include <cstdint>

#include "../../../core/cuda_compat.h"
#include "../../../core/swish.h"

namespace ncpfast {
namespace ops {
namespace mlp_kernels {

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
  NCP_DYNAMIC_SHARED(float, shared);
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

}  // namespace mlp_kernels
}  // namespace ops
}  // namespace ncpfast
