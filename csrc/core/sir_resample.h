// SIR resampling, the torch-free core shared by the CPU backend and the tests.
//
// For one row of M log-weights, draw S indices with probability
// softmax(log_weights) and report the row's log-normaliser
// logsumexp(log_weights). The random numbers come from the Philox stream in
// philox.h, so the CPU and CUDA backends draw the same uniforms for a seed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common.h"
#include "fast_exp.h"
#include "philox.h"

namespace ncpfast {
namespace core {

// Both backends build a row's CDF tile by tile: a float prefix sum within each
// tile of kSirTile weights (so its resolution is relative to the tile's mass,
// not the row's), tile offsets and the row total in double, the total being
// the sum of the tile totals in order (so that a target below the total
// always falls in some tile). The CUDA kernel holds one tile in shared memory.
constexpr int64_t kSirTile = 4096;

NCPFAST_HD int64_t sir_tile_count(int64_t M) { return (M + kSirTile - 1) / kSirTile; }

// Where sample `j` of `num_samples` falls in [0, 1) of the row's probability
// mass. Multinomial: an independent uniform per sample. Systematic: one
// uniform u per row and the evenly spaced points (u + j) / S.
NCPFAST_HD double sir_target_fraction(uint64_t seed, uint64_t row, int64_t j, int64_t num_samples, bool systematic) {
  if (systematic) return (sir_uniform(seed, row, 0) + static_cast<double>(j)) / static_cast<double>(num_samples);
  return sir_uniform(seed, row, static_cast<uint64_t>(j));
}

// The row's log-normaliser from its maximum and its total mass relative to it.
NCPFAST_HD float sir_log_normalizer(float row_max, double total) {
  return static_cast<float>(static_cast<double>(row_max) + log(total));
}

// Resamples one row on the CPU.
//   log_weights: M values; indices_out: S slots; cdf_scratch: M floats and
//   tile_offsets: sir_tile_count(M) + 1 doubles that the caller owns (one
//   buffer per thread, reused across rows, so no [B, M] probability tensor is
//   ever written).
// Returns the row's log-normaliser: finite for a valid row, -inf when every
// weight is -inf, NaN when a weight is NaN or +inf. For an invalid row the
// indices are set to 0 and the caller must report the row as an error.
template <typename T>
float sir_resample_row_cpu(const T* log_weights, int64_t M, int64_t S, bool systematic, uint64_t seed, int64_t row,
                           float* cdf_scratch, double* tile_offsets, int64_t* indices_out) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  // The max (with a NaN/+inf flag) and the exponentials vectorise (omp simd,
  // built with -fopenmp-simd; no OpenMP runtime needed). The prefix sum stays
  // sequential on purpose: a reassociated scan could give a -inf (zero-weight)
  // entry a one-ulp step of the CDF and make it drawable.
  float row_max = -kInf;
  int invalid = 0;
#pragma omp simd reduction(max : row_max) reduction(| : invalid)
  for (int64_t i = 0; i < M; ++i) {
    const float x = to_float(log_weights[i]);
    invalid |= static_cast<int>(x != x) | static_cast<int>(x == kInf);
    row_max = x > row_max ? x : row_max;
  }
  if (invalid || row_max == -kInf) {
    std::fill(indices_out, indices_out + S, int64_t{0});
    return invalid ? std::numeric_limits<float>::quiet_NaN() : -kInf;
  }

#pragma omp simd
  for (int64_t i = 0; i < M; ++i) cdf_scratch[i] = exp_nonpositive(to_float(log_weights[i]) - row_max);
  // Per tile, the unnormalised CDF of exp(x - max); -inf weights add exactly
  // 0, so the first index whose CDF exceeds a target never has zero weight.
  const int64_t tiles = sir_tile_count(M);
  int64_t last_positive = 0;
  double offset = 0.0;
  for (int64_t t = 0; t < tiles; ++t) {
    float cumulative = 0.f;
    for (int64_t i = t * kSirTile; i < std::min(M, (t + 1) * kSirTile); ++i) {
      if (cdf_scratch[i] > 0.f) last_positive = i;
      cumulative += cdf_scratch[i];
      cdf_scratch[i] = cumulative;
    }
    tile_offsets[t] = offset;
    offset += cumulative;
  }
  tile_offsets[tiles] = offset;
  const double total = offset;
  for (int64_t j = 0; j < S; ++j) {
    const double target = sir_target_fraction(seed, static_cast<uint64_t>(row), j, S, systematic) * total;
    // The tile t with offsets[t] <= target < offsets[t + 1], then the first
    // entry of its CDF above the target's place in it.
    const int64_t t = std::upper_bound(tile_offsets + 1, tile_offsets + tiles + 1, target) - (tile_offsets + 1);
    int64_t k = M;
    if (t < tiles) {
      const float* cdf = cdf_scratch + t * kSirTile;
      const int64_t length = std::min(kSirTile, M - t * kSirTile);
      const double local = target - tile_offsets[t];
      const int64_t i =
          std::upper_bound(cdf, cdf + length, local, [](double value, float entry) { return value < entry; }) - cdf;
      if (i < length) k = t * kSirTile + i;
    }
    // A target rounded up to a tile's or the row's total finds no entry: it
    // belongs to the last index that carries weight.
    indices_out[j] = k < M ? k : last_positive;
  }
  return sir_log_normalizer(row_max, total);
}

// Copies the chosen proposals of one row: out[j] = proposals[indices[j]], each
// proposal `row_bytes` bytes (the op is dtype-agnostic here).
inline void sir_gather_row(const unsigned char* proposals_row, const int64_t* indices, int64_t S, int64_t row_bytes,
                           unsigned char* out_row) {
  if (row_bytes == 0) return;  // memcpy's pointers must be valid even for 0 bytes
  for (int64_t j = 0; j < S; ++j) {
    std::memcpy(out_row + j * row_bytes, proposals_row + indices[j] * row_bytes, static_cast<size_t>(row_bytes));
  }
}

}  // namespace core
}  // namespace ncpfast
