// The CUDA kernel of ncpfast::mlp_log_ratio, torch-free: the extension
// (mlp_log_ratio_cuda.cu) launches it on tensors, and the native emulated test
// (csrc/tests/test_mlp_cuda_emulated.cpp) runs it on the CPU emulation of the
// CUDA execution model against a double-precision MLP.
//
// One block runs a tile of proposals through the whole MLP: the tile's hidden
// activations live in shared memory (two buffers, ping-pong), the proposals
// are staged there too, converted to float, a chunk of columns at a time;
// each thread owns output units and keeps one accumulator per tile row in
// registers; weights are read transposed ([in, out], so a warp's loads are
// coalesced) from global memory / L2. Only the logits [B, M] are written.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../../../core/cuda_compat.h"
#include "../../../core/swish.h"

namespace ncpfast {
namespace ops {
namespace mlp_kernels {

constexpr int kThreads = 256;
constexpr int kTileRows = 16;
constexpr int kMaxLayers = 8;
// Columns of the proposals staged in shared memory at a time (layer 0).
constexpr int kStageColumns = 64;

struct Layers {
  const float* weight_t[kMaxLayers];  // [in, out], row-major
  const float* bias[kMaxLayers];
  int in[kMaxLayers], out[kMaxLayers];
  int count;
};

// Dynamic shared memory of one block: the two ping-pong activation tiles and
// the staging tile for the proposals.
inline size_t mlp_shared_bytes(int widest) {
  return sizeof(float) * kTileRows * (2 * static_cast<size_t>(widest) + kStageColumns);
}

// The widest hidden layer whose tiles fit `shared_limit` bytes: 352 within
// the 48 KiB a block gets by default, 1,784 within an H100/H200's 227 KiB
// opt-in limit (cudaDeviceProp::sharedMemPerBlockOptin).
inline int mlp_max_width(size_t shared_limit) {
  const size_t floats_per_row = shared_limit / sizeof(float) / kTileRows;
  return floats_per_row < kStageColumns ? 0 : static_cast<int>((floats_per_row - kStageColumns) / 2);
}

// acc[i] += sum_k src[r * ld + k] * w[k * H] for k < width and the rows
// r = first_row + i * row_stride < count that this thread owns. src is shared
// memory; w points at one output unit's column of W^T (global). With ld a
// multiple of 4 (and src 16-byte aligned) the activations are read 4 columns
// at a time: one 16-byte shared load serves 4 FMAs, instead of a load per FMA.
template <int kRows>
__device__ __forceinline__ void accumulate_columns(const float* src, int ld, int width, const float* w, int H,
                                                   int first_row, int row_stride, int count, float (&acc)[kRows]) {
  int k = 0;
  if (ld % 4 == 0) {
    for (; k + 4 <= width; k += 4) {
      const float w0 = w[k * H], w1 = w[(k + 1) * H], w2 = w[(k + 2) * H], w3 = w[(k + 3) * H];
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int r = first_row + i * row_stride;
        if (r < count) {
          const float4 a = *reinterpret_cast<const float4*>(src + r * ld + k);
          acc[i] += a.x * w0 + a.y * w1 + a.z * w2 + a.w * w3;
        }
      }
    }
  }
  for (; k < width; ++k) {
    const float wk = w[k * H];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int r = first_row + i * row_stride;
      if (r < count) acc[i] += src[r * ld + k] * wk;
    }
  }
}

// One block runs kTileRows proposals through the whole MLP; shared memory
// holds mlp_shared_bytes(widest), widest = the widest hidden layer. The
// block's threads form kTileRows / kRowsPerThread groups; a group computes
// kThreads / groups output units at a time, each thread for its kRowsPerThread
// rows (r = group, group + groups, ...). One group of 256 units suits wide
// layers; narrow ones (the group classifiers' 64 units) would leave most
// threads idle, so they use more groups with fewer rows each
// (with_mlp_kernel picks).
template <typename T, int kRowsPerThread>
__global__ void mlp_log_ratio_kernel(const T* z, int64_t rows, Layers layers, int widest, float* logits) {
  static_assert(kTileRows % kRowsPerThread == 0, "row groups must tile the block's rows");
  constexpr int kGroups = kTileRows / kRowsPerThread;
  constexpr int kUnits = kThreads / kGroups;  // output units a pass computes
  NCPFAST_DYNAMIC_SHARED(float, shared);
  float* const tile_a = shared;                           // outputs of even layers
  float* const tile_b = shared + kTileRows * widest;      // outputs of odd layers
  float* const staged = shared + 2 * kTileRows * widest;  // [kTileRows][kStageColumns] proposals
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int count = static_cast<int>(rows - r0 < kTileRows ? rows - r0 : kTileRows);
  const int D = layers.in[0];
  const int group = static_cast<int>(threadIdx.x) / kUnits, unit = static_cast<int>(threadIdx.x) % kUnits;
  for (int l = 0; l + 1 < layers.count; ++l) {
    const int K = layers.in[l], H = layers.out[l];
    const float* in = l % 2 == 1 ? tile_a : tile_b;  // unused for l == 0
    float* out = l % 2 == 0 ? tile_a : tile_b;
    for (int h0 = 0; h0 < H; h0 += kUnits) {  // block-uniform: the barriers below are reached by all
      const int h = h0 + unit;
      float acc[kRowsPerThread];
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i) acc[i] = 0.f;
      if (l == 0) {
        // The proposals, kStageColumns columns at a time, converted to float in shared memory.
        for (int k0 = 0; k0 < D; k0 += kStageColumns) {
          const int width = D - k0 < kStageColumns ? D - k0 : kStageColumns;
          __syncthreads();  // the previous chunk is no longer being read
          for (int i = threadIdx.x; i < count * width; i += kThreads) {
            const int r = i / width, k = i % width;
            staged[r * kStageColumns + k] = static_cast<float>(z[(r0 + r) * D + k0 + k]);
          }
          __syncthreads();
          if (h < H)
            accumulate_columns(staged, kStageColumns, width, layers.weight_t[0] + k0 * H + h, H, group, kGroups, count,
                               acc);
        }
      } else if (h < H) {
        accumulate_columns(in, K, K, layers.weight_t[l] + h, H, group, kGroups, count, acc);
      }
      if (h < H) {
        const float b = layers.bias[l][h];
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) {
          const int r = group + i * kGroups;
          if (r < count) out[r * H + h] = core::swish(acc[i] + b);
        }
      }
    }
    __syncthreads();
  }
  // The last layer: one logit per row, a warp per row.
  const int last = layers.count - 1, K = layers.in[last];
  const float* in = last % 2 == 1 ? tile_a : tile_b;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < count; r += kThreads / 32) {
    float acc = 0.f;
    for (int k = lane; k < K; k += 32) acc += in[r * K + k] * layers.weight_t[last][k];
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) logits[r0 + r] = acc + layers.bias[last][0];
  }
}

// Calls launch(kernel) with the instantiation for hidden layers at most
// `widest` wide: as many row groups as keep a pass's output units busy.
template <typename T, typename Launch>
void with_mlp_kernel(int widest, Launch&& launch) {
  if (widest <= 32) {
    launch(mlp_log_ratio_kernel<T, 2>);  // 8 groups of 32 units
  } else if (widest <= 64) {
    launch(mlp_log_ratio_kernel<T, 4>);  // 4 groups of 64
  } else if (widest <= 128) {
    launch(mlp_log_ratio_kernel<T, 8>);  // 2 groups of 128
  } else {
    launch(mlp_log_ratio_kernel<T, 16>);  // 1 group of 256
  }
}

// Runs the MLP on `rows` proposals (B * M) on `stream`. Past the default
// 48 KiB of dynamic shared memory the kernel is opted in to what it needs, up
// to shared_optin_limit (the device's sharedMemPerBlockOptin); a wider layer
// returns cudaErrorInvalidValue without a launch (check mlp_max_width first).
template <typename T>
cudaError_t launch_mlp_log_ratio(const T* z, int64_t rows, const Layers& layers, int widest, float* logits,
                                 size_t shared_optin_limit, cudaStream_t stream) {
  const size_t shared = mlp_shared_bytes(widest);
  const size_t limit =
      shared_optin_limit > core::kDefaultSharedBytesPerBlock ? shared_optin_limit : core::kDefaultSharedBytesPerBlock;
  if (shared > limit) return cudaErrorInvalidValue;
  const unsigned blocks = static_cast<unsigned>((rows + kTileRows - 1) / kTileRows);
  cudaError_t status = cudaSuccess;
  with_mlp_kernel<T>(widest, [&](auto kernel) {
    if (shared > core::kDefaultSharedBytesPerBlock) {
      status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
      if (status != cudaSuccess) return;
    }
    NCPFAST_LAUNCH(kernel, blocks, kThreads, shared, stream, z, rows, layers, widest, logits);
    status = cudaGetLastError();
  });
  return status;
}

}  // namespace mlp_kernels
}  // namespace ops
}  // namespace ncpfast
