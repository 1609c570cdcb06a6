// SIR resampling on the GPU, the torch-free kernel shared by the extension
// (csrc/ops/sir_resample/cuda) and the native CUDA test (csrc/tests).
//
// One block per row. The row's log-weights are read from global memory once
// when they fit in one shared-memory tile (M <= kSirTile), else three times
// (max, the tile totals, walk), tile by tile. Per tile the block turns the
// weights into an inclusive float CDF in shared memory; every sample whose
// target (in double, see sir_resample.h) falls inside the tile finds its index
// by binary search. Sample j always belongs to thread
// j % kSirThreads, so each thread reads back only what it wrote itself. Then the
// block copies the chosen proposals, 16 bytes at a time where alignment allows.
// No [B, M] probability tensor touches global memory.
#pragma once

#include <cstdint>

#include "../../../core/common.h"
#include "../../../core/cuda_compat.h"
#include "../../../core/philox.h"
#include "../../../core/sir_resample.h"

namespace ncpfast {
namespace core {

constexpr int kSirThreads = 256;
constexpr int kSirItemsPerThread = static_cast<int>(kSirTile) / kSirThreads;  // the tile: 16 KiB of shared memory

struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};
struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
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
// each thread scans its own contiguous chunk; the chunk totals are scanned
// serially (one thread per warp, then the warps in order), so that a chunk's
// first value and its predecessor's last value are sums of the same operands
// in the same order. That makes a zero (a -inf weight) exactly equal to the
// value before it wherever it sits, also at the start of a chunk, so the
// binary search below (which returns k with cdf[k-1] <= target < cdf[k])
// never lands on it. chunk_scratch: kSirThreads floats; warp_scratch: one per
// warp.
__device__ void block_inclusive_scan(float* tile, int length, float* chunk_scratch, float* warp_scratch) {
  const int begin = threadIdx.x * kSirItemsPerThread;
  float running = 0.f;
#pragma unroll
  for (int k = 0; k < kSirItemsPerThread; ++k) {
    if (begin + k < length) {
      running += tile[begin + k];
      tile[begin + k] = running;
    }
  }
  chunk_scratch[threadIdx.x] = running;
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {  // the warp's chunk totals -> exclusive prefix sums, in order
    float sum = 0.f;
    for (int i = 0; i < 32; ++i) {
      const float chunk_total = chunk_scratch[threadIdx.x + i];
      chunk_scratch[threadIdx.x + i] = sum;
      sum += chunk_total;
    }
    warp_scratch[warp] = sum;
  }
  __syncthreads();
  float warp_offset = 0.f;
  for (int w = 0; w < warp; ++w) warp_offset += warp_scratch[w];
  const float chunk_start = warp_offset + chunk_scratch[threadIdx.x];
  const float chunk_end = warp_offset + (lane == 31 ? warp_scratch[warp] : chunk_scratch[threadIdx.x + 1]);
#pragma unroll
  for (int k = 0; k < kSirItemsPerThread; ++k) {
    // From the chunk's last weight on, the value is the one the next chunk starts from.
    if (begin + k < length) tile[begin + k] = tile[begin + k] == running ? chunk_end : chunk_start + tile[begin + k];
  }
  __syncthreads();
}

// First position in cdf[0, length) whose value exceeds target (length when
// none). With a non-decreasing cdf up to rounding it still returns k with
// cdf[k - 1] <= target < cdf[k].
__device__ __forceinline__ int upper_bound_shared(const float* cdf, int length, double target) {
  int lo = 0, hi = length;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (static_cast<double>(cdf[mid]) > target) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

// The CDF of the tile of weights [start, start + length) of the row in shared
// memory, relative to row_max; returns the tile's total. Passes 2 and 3 call
// it on the same tile with the same arithmetic, so their totals agree to the
// bit. With `resident`, the tile already holds the weights (as floats), each
// written by the thread that reads it here.
template <typename T>
__device__ float tile_cdf(const T* row_weights, int64_t start, int length, bool resident, float row_max, float* tile,
                          float* chunk_scratch, float* warp_scratch, long long& thread_last_positive) {
  __syncthreads();  // the previous tile's CDF (and total) is no longer being read
  for (int i = threadIdx.x; i < length; i += kSirThreads) {
    const float x = resident ? tile[i] : to_float(row_weights[start + i]);
    const float e = expf(x - row_max);
    if (e > 0.f) thread_last_positive = start + i;
    tile[i] = e;
  }
  __syncthreads();
  block_inclusive_scan(tile, length, chunk_scratch, warp_scratch);
  return tile[length - 1];
}

// Copies `row_bytes` bytes for each of S samples, all threads of the block
// sharing the work; Word is the widest type that the alignment allows.
template <typename Word>
__device__ void gather_rows(const unsigned char* proposals_row, const int64_t* indices, int64_t S, int64_t row_bytes,
                            unsigned char* out_row) {
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
    sir_resample_kernel(const T* __restrict__ log_weights, const unsigned char* __restrict__ proposals, int64_t M,
                        int64_t S, int64_t row_bytes, bool systematic, const int64_t* __restrict__ seed_ptr,
                        unsigned char* __restrict__ samples, int64_t* __restrict__ indices,
                        float* __restrict__ log_normalizer) {
  NCPFAST_STATIC_SHARED(float, tile, [kSirTile]);
  NCPFAST_STATIC_SHARED(float, chunk_scratch, [kSirThreads]);
  NCPFAST_STATIC_SHARED(float, float_scratch, [kSirThreads / 32]);
  NCPFAST_STATIC_SHARED(long long, index_scratch, [kSirThreads / 32]);
  NCPFAST_STATIC_SHARED(int, flag_scratch, [kSirThreads / 32]);

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

  // Pass 2 (only when the row spans several tiles): the total mass, the sum
  // of the tile totals in the order pass 3 adds them up, so that targets are
  // known before the walk.
  long long thread_last_positive = 0;
  double total = 0.0;
  if (!resident) {
    for (int64_t start = 0; start < M; start += kSirTile) {
      const int length = static_cast<int>(M - start < kSirTile ? M - start : kSirTile);
      total += tile_cdf(row_weights, start, length, false, row_max, tile, chunk_scratch, float_scratch,
                        thread_last_positive);
    }
  }

  // Pass 3: tile by tile, CDF in shared memory, then each thread places the
  // samples it owns whose target falls into this tile.
  double tile_offset = 0.0;
  for (int64_t start = 0; start < M; start += kSirTile) {
    const int length = static_cast<int>(M - start < kSirTile ? M - start : kSirTile);
    const float tile_total = tile_cdf(row_weights, start, length, resident, row_max, tile, chunk_scratch, float_scratch,
                                      thread_last_positive);
    if (resident) total = tile_total;
    const double next_offset = tile_offset + tile_total;
    for (int64_t j = threadIdx.x; j < S; j += kSirThreads) {
      const double target = sir_target_fraction(seed, row, j, S, systematic) * total;
      if (target >= tile_offset && target < next_offset) {
        const int k = upper_bound_shared(tile, length, target - tile_offset);
        if (k < length) row_indices[j] = start + k;
      }
    }
    tile_offset = next_offset;
  }

  // Targets that rounding left unplaced (at the very top of the mass, or
  // between two tiles) belong to the last index with weight.
  const long long last_positive = block_all_reduce(thread_last_positive, MaxOp(), index_scratch);
  for (int64_t j = threadIdx.x; j < S; j += kSirThreads) {
    if (row_indices[j] < 0) row_indices[j] = last_positive;
  }
  if (threadIdx.x == 0) log_normalizer[row] = sir_log_normalizer(row_max, total);
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
cudaError_t launch_sir_resample(const T* log_weights, const void* proposals, int64_t B, int64_t M, int64_t S,
                                int64_t row_bytes, bool systematic, const int64_t* seed, void* samples,
                                int64_t* indices, float* log_normalizer, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  NCPFAST_LAUNCH(sir_resample_kernel<T>, static_cast<unsigned int>(B), kSirThreads, 0, stream, log_weights,
                 static_cast<const unsigned char*>(proposals), M, S, row_bytes, systematic, seed,
                 static_cast<unsigned char*>(samples), indices, log_normalizer);
  return cudaGetLastError();
}

}  // namespace core
}  // namespace ncpfast
