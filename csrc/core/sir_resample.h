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

// Where sample `j` of `num_samples` falls in [0, 1) of the row's probability
// mass. Multinomial: an independent uniform per sample. Systematic: one
// uniform u per row and the evenly spaced points (u + j) / S.
NCPFAST_HD float sir_target_fraction(uint64_t seed, uint64_t row, int64_t j, int64_t num_samples,
                                 bool systematic) {
  if (systematic) {
    const float u0 = sir_uniform(seed, row, 0);
    return (u0 + static_cast<float>(j)) / static_cast<float>(num_samples);
  }
  return sir_uniform(seed, row, static_cast<uint64_t>(j));
}

// Resamples one row on the CPU.
//   log_weights: M values; indices_out: S slots; cdf_scratch: M floats that the
//   caller owns (one buffer per thread, reused across rows, so no [B, M]
//   probability tensor is ever written).
// Returns the row's log-normaliser: finite for a valid row, -inf when every
// weight is -inf, NaN when a weight is NaN or +inf. For an invalid row the
// indices are set to 0 and the caller must report the row as an error.
template <typename T>
float sir_resample_row_cpu(const T* log_weights, int64_t M, int64_t S, bool systematic,
                           uint64_t seed, int64_t row, float* cdf_scratch, int64_t* indices_out) {
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
  // Unnormalised CDF of exp(x - max); -inf weights add exactly 0, so the
  // first index whose CDF exceeds a target never has zero weight.
  float cumulative = 0.f;
  int64_t last_positive = 0;
  for (int64_t i = 0; i < M; ++i) {
    if (cdf_scratch[i] > 0.f) last_positive = i;
    cumulative += cdf_scratch[i];
    cdf_scratch[i] = cumulative;
  }
  const float total = cumulative;
  for (int64_t j = 0; j < S; ++j) {
    const float target = sir_target_fraction(seed, static_cast<uint64_t>(row), j, S, systematic) * total;
    const int64_t k = std::upper_bound(cdf_scratch, cdf_scratch + M, target) - cdf_scratch;
    // A target rounded up to the total finds no entry: it belongs to the
    // last index that carries weight.
    indices_out[j] = k < M ? k : last_positive;
  }
  return row_max + std::log(total);
}

// Copies the chosen proposals of one row: out[j] = proposals[indices[j]], each
// proposal `row_bytes` bytes (the op is dtype-agnostic here).
inline void sir_gather_row(const unsigned char* proposals_row, const int64_t* indices, int64_t S,
                           int64_t row_bytes, unsigned char* out_row) {
  if (row_bytes == 0) return;  // memcpy's pointers must be valid even for 0 bytes
  for (int64_t j = 0; j < S; ++j) {
    std::memcpy(out_row + j * row_bytes, proposals_row + indices[j] * row_bytes,
                static_cast<size_t>(row_bytes));
  }
}

}  // namespace core
}  // namespace ncpfast
