// SIR resampling on the GPU, the torch-free kernel shared by the extension
// (csrc/ops/sir_resample/cuda) and the native CUDA test (csrc/tests).
//
// One block per row. The row's log-weights are read from global memory once
// when they fit in one shared-memory tile (M <= kSirTile), else three times
// (max, sum, walk), tile by tile. Per tile the block turns the weights into an
// inclusive CDF in shared memory; every sample whose target falls inside the
// tile finds its index by binary search. Sample j always belongs to thread
// j % kSirThreads, so each thread reads back only what it wrote itself. Then the
// block copies the chosen proposals, 16 bytes at a time where alignment allows.
// No [B, M] probability tensor touches global memory.
#pragma once

#include <cstdint>

#include "common.h"
#include "cuda_compat.h"
#include "philox.h"
#include "sir_resample.h"

namespace ncpfast {
namespace core {

constexpr int kSirThreads = 256;
constexpr int kSirTile = 4096;  // floats: 16 KiB of shared memory
constexpr int kSirItemsPerThread = kSirTile / kSirThreads;

struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

// Block-wide all-reduce: every thread gets the result. `scratch` holds one
// value per warp; the leading barrier lets the caller reuse it back to back.
template <typename T, typename Op>
__device__ T block_all_reduce(T value, Op op, T* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = value;
  __syncthreads();
  T result = scratch[0];
  for (int w = 1; w < kSirThreads / 32; ++w) result = op(result, scratch[w]);
  return result;
}

// In-place inclusive prefix sum of tile[0, length) (length <= kSirTile):
// each thread scans its own contiguous chunk, a warp scan then a block scan of
// the chunk totals gives each chunk its offset.
__device__ void block_inclusive_scan(float* tile, int length, float* warp_totals) {
  const int begin = threadIdx.x * kSirItemsPerThread;
  float running = 0.f;
#pragma unroll
  for (int k = 0; k < kSirItemsPerThread; ++k) {
    if (begin + k < length) {
      running += tile[begin + k];
      tile[begin + k] = running;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float inclusive = running;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const float up = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  __syncthreads();
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  float warp_offset = 0.f;
  for (int w = 0; w < warp; ++w) warp_offset += warp_totals[w];
  const float exclusive = warp_offset + inclusive - running;
#pragma unroll
  for (int k = 0; k < kSirItemsPerThread; ++k) {
    if (begin + k < length) tile[begin + k] += exclusive;
  }
  __syncthreads();
}

// First position in cdf[0, length) whose value exceeds target (length when none).
__device__ __forceinline__ int upper_bound_shared(const float* cdf, int length, float target) {
  int lo = 0, hi = length;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (cdf[mid] > target) hi = mid; else lo = mid + 1;
  }
  return lo;
}

// Copies `row_bytes` bytes for each of S samples, all threads of the block
// sharing the work; Word is the widest type that the alignment allows.
template <typename Word>
__device__ void gather_rows(const unsigned char* proposals_row, const int64_t* indices, int64_t S,
                            int64_t row_bytes, unsigned char* out_row) {
  const int64_t words_per_row = row_bytes / static_cast<int64_t>(sizeof(Word));
  const int64_t total_words = S * words_per_row;
  for (int64_t w = threadIdx.x; w < total_words; w += kSirThreads) {
    const int64_t j = w / words_per_row, k = w - j * words_per_row;
    const Word* src = reinterpret_cast<const Word*>(proposals_row + indices[j] * row_bytes);
    Word* dst = reinterpret_cast<Word*>(out_row + j * row_bytes);
    dst[k] = src[k];
  }
}

template <typename T>
__global__ void __launch_bounds__(kSirThreads)
sir_resample_kernel(const T* __restrict__ log_weights, const unsigned char* __restrict__ proposals,
                    int64_t M, int64_t S, int64_t row_bytes, bool systematic,
                    const int64_t* __restrict__ seed_ptr, unsigned char* __restrict__ samples,
                    int64_t* __restrict__ indices, float* __restrict__ log_normalizer) {
  __shared__ float tile[kSirTile];
  __shared__ float float_scratch[kSirThreads / 32];
  __shared__ long long index_scratch[kSirThreads / 32];
  __shared__ int flag_scratch[kSirThreads / 32];

  const int64_t row = blockIdx.x;
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  const T* row_weights = log_weights + row * M;
  int64_t* row_indices = indices + row * S;
  const bool resident = M <= kSirTile;
  const float kInf = __int_as_float(0x7f800000);

  // Pass 1: the row maximum, and whether any weight is NaN or +inf.
  float thread_max = -kInf;
  int invalid = 0;
  for (int64_t i = threadIdx.x; i < M; i += kSirThreads) {
    const float x = to_float(row_weights[i]);
    invalid |= (isnan(x) || x == kInf) ? 1 : 0;
    thread_max = fmaxf(thread_max, x);
    if (resident) tile[i] = x;
  }
  const float row_max = block_all_reduce(thread_max, MaxOp(), float_scratch);
  invalid = block_all_reduce(invalid, MaxOp(), flag_scratch);
  for (int64_t j = threadIdx.x; j < S; j += kSirThreads) row_indices[j] = invalid || row_max == -kInf ? 0 : -1;
  if (invalid || row_max == -kInf) {
    // The host reports the row from its non-finite normaliser; no gather.
    if (threadIdx.x == 0) log_normalizer[row] = invalid ? __int_as_float(0x7fffffff) : -kInf;
    return;
  }

  // Pass 2 (only when the row spans several tiles): the total mass, so that
  // targets are known before the walk.
  float total = 0.f;
  if (!resident) {
    float thread_sum = 0.f;
    for (int64_t i = threadIdx.x; i < M; i += kSirThreads) {
      thread_sum += expf(to_float(row_weights[i]) - row_max);
    }
    total = block_all_reduce(thread_sum, SumOp(), float_scratch);
  }

  // Pass 3: tile by tile, CDF in shared memory, then each thread places the
  // samples it owns whose target falls into this tile.
  float tile_offset = 0.f;
  long long thread_last_positive = 0;
  for (int64_t start = 0; start < M; start += kSirTile) {
    const int length = static_cast<int>(M - start < kSirTile ? M - start : kSirTile);
    for (int i = threadIdx.x; i < length; i += kSirThreads) {
      const float x = resident ? tile[i] : to_float(row_weights[start + i]);
      const float e = expf(x - row_max);
      if (e > 0.f) thread_last_positive = start + i;
      tile[i] = e;
    }
    __syncthreads();
    block_inclusive_scan(tile, length, float_scratch);
    const float tile_total = tile[length - 1];
    if (resident) total = tile_total;
    for (int64_t j = threadIdx.x; j < S; j += kSirThreads) {
      const float local = sir_target_fraction(seed, row, j, S, systematic) * total - tile_offset;
      if (local >= 0.f && local < tile_total) {
        row_indices[j] = start + upper_bound_shared(tile, length, local);
      }
    }
    tile_offset += tile_total;
    __syncthreads();  // the next tile overwrites the CDF
  }

  // Targets that rounding left unplaced (at the very top of the mass, or
  // between two tiles) belong to the last index with weight.
  const long long last_positive = block_all_reduce(thread_last_positive, MaxOp(), index_scratch);
  for (int64_t j = threadIdx.x; j < S; j += kSirThreads) {
    if (row_indices[j] < 0) row_indices[j] = last_positive;
  }
  if (threadIdx.x == 0) log_normalizer[row] = row_max + logf(total);
  __syncthreads();  // every index of the row is written before the gather reads them

  const unsigned char* proposals_row = proposals + row * M * row_bytes;
  unsigned char* out_row = samples + row * S * row_bytes;
  const bool aligned16 = (reinterpret_cast<uintptr_t>(proposals) | reinterpret_cast<uintptr_t>(samples)) % 16 == 0;
  const bool aligned4 = (reinterpret_cast<uintptr_t>(proposals) | reinterpret_cast<uintptr_t>(samples)) % 4 == 0;
  if (aligned16 && row_bytes % 16 == 0) {
    gather_rows<uint4>(proposals_row, row_indices, S, row_bytes, out_row);
  } else if (aligned4 && row_bytes % 4 == 0) {
    gather_rows<uint32_t>(proposals_row, row_indices, S, row_bytes, out_row);
  } else {
    gather_rows<unsigned char>(proposals_row, row_indices, S, row_bytes, out_row);
  }
}

// Launches one block per row on `stream`. Pointers are device pointers; the
// proposal buffers must be 16-byte aligned for the wide path (allocations are).
template <typename T>
cudaError_t launch_sir_resample(const T* log_weights, const void* proposals, int64_t B, int64_t M,
                                int64_t S, int64_t row_bytes, bool systematic,
                                const int64_t* seed, void* samples, int64_t* indices,
                                float* log_normalizer, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  NCPFAST_LAUNCH(sir_resample_kernel<T>, static_cast<unsigned int>(B), kSirThreads, 0, stream, log_weights,
             static_cast<const unsigned char*>(proposals), M, S, row_bytes, systematic, seed,
             static_cast<unsigned char*>(samples), indices, log_normalizer);
  return cudaGetLastError();
}

}  // namespace core
}  // namespace ncpfast
