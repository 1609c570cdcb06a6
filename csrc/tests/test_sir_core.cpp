// Native tests of the torch-free SIR core: the Philox stream, the per-row
// resample (distribution, systematic counts, -inf, invalid rows, precision at
// large M), the gather.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "sir_resample.h"

using namespace ncpfast::core;

static void test_philox_known_answer() {
  // Random123's known-answer vector for philox4x32-10, counter 0 and key 0.
  const Philox4 out = philox4x32_10(Philox4{{0, 0, 0, 0}}, 0, 0);
  const uint32_t expected[4] = {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u};
  for (int i = 0; i < 4; ++i) NCPFAST_EXPECT(out.v[i] == expected[i], "word %d = %08x", i, out.v[i]);
  int64_t finer_than_24_bits = 0, finer_than_32_bits = 0;
  for (uint64_t s = 0; s < 10000; ++s) {
    const double u = sir_uniform(12345, 7, s);
    NCPFAST_EXPECT(u >= 0. && u < 1., "uniform %g out of [0, 1)", u);
    finer_than_24_bits += std::ldexp(u, 24) != std::floor(std::ldexp(u, 24));
    finer_than_32_bits += std::ldexp(u, 32) != std::floor(std::ldexp(u, 32));
  }
  // 53 random bits: all but about 1 in 2^21 uniforms have bits below 2^-32.
  NCPFAST_EXPECT(finer_than_24_bits == 10000 && finer_than_32_bits >= 9999,
                 "uniforms resolved to 2^-24 / 2^-32: only %lld / %lld of 10000 finer",
                 static_cast<long long>(finer_than_24_bits), static_cast<long long>(finer_than_32_bits));
}

// The CPU core's scratch for a row of M weights, and one call.
struct RowScratch {
  std::vector<float> cdf;
  std::vector<double> tile_offsets;
  explicit RowScratch(int64_t M) : cdf(M), tile_offsets(sir_tile_count(M) + 1) {}
};

template <typename T>
static float resample_row(const std::vector<T>& w, int64_t S, bool systematic, uint64_t seed, int64_t row,
                          std::vector<int64_t>& idx) {
  const int64_t M = static_cast<int64_t>(w.size());
  RowScratch scratch(M);
  idx.assign(S, -1);
  return sir_resample_row_cpu(w.data(), M, S, systematic, seed, row, scratch.cdf.data(), scratch.tile_offsets.data(),
                              idx.data());
}

static void test_exp_nonpositive() {
  double worst = 0;
  for (int i = 0; i <= 200000; ++i) {
    const float x = -87.0f * static_cast<float>(i) / 200000.f;
    const double exact = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(exp_nonpositive(x) - exact) / exact);
  }
  NCPFAST_EXPECT(worst < 3e-7, "relative error %g", worst);
  NCPFAST_EXPECT(exp_nonpositive(-INFINITY) == 0.f, "exp(-inf) must be 0");
  NCPFAST_EXPECT(exp_nonpositive(-100.f) == 0.f, "exp(-100) flushes to 0");
  NCPFAST_EXPECT(exp_nonpositive(0.f) == 1.f, "exp(0) = %g", exp_nonpositive(0.f));
}

static double logsumexp(const std::vector<float>& w) {
  double m = -INFINITY;
  for (float x : w) m = std::max<double>(m, x);
  double s = 0;
  for (float x : w) s += std::exp(x - m);
  return m + std::log(s);
}

static void test_multinomial_frequencies() {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.f, 1.5f);
  const int64_t M = 12, S = 200000;
  std::vector<float> w(M);
  for (auto& x : w) x = normal(rng);
  w[5] = -INFINITY;
  std::vector<int64_t> idx;
  const float lz = resample_row(w, S, false, 99, 0, idx);
  NCPFAST_EXPECT(std::fabs(lz - logsumexp(w)) < 1e-5, "log-normaliser %g vs %g", lz, logsumexp(w));
  std::vector<int64_t> counts(M, 0);
  for (int64_t k : idx) {
    NCPFAST_EXPECT(k >= 0 && k < M, "index %lld out of range", static_cast<long long>(k));
    if (k >= 0 && k < M) ++counts[k];
  }
  NCPFAST_EXPECT(counts[5] == 0, "-inf weight drawn %lld times", static_cast<long long>(counts[5]));
  for (int64_t i = 0; i < M; ++i) {
    const double p = std::exp(w[i] - logsumexp(w));
    const double sd = std::sqrt(S * p * (1 - p)) + 1e-9;
    NCPFAST_EXPECT(std::fabs(counts[i] - S * p) < 5 * sd + 1, "index %lld: %lld draws, expected %g",
                   static_cast<long long>(i), static_cast<long long>(counts[i]), S * p);
  }
}

static void test_systematic_counts_within_one() {
  std::mt19937 rng(4);
  std::uniform_real_distribution<double> uni(-3.0, 3.0);
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t M = 1 + trial * 7, S = 1 + trial * 13;
    std::vector<double> w(M);  // double weights exercise the other instantiation
    for (auto& x : w) x = uni(rng);
    std::vector<float> wf(w.begin(), w.end());
    std::vector<int64_t> idx, counts(M, 0);
    resample_row(w, S, true, 1000 + trial, trial, idx);
    for (int64_t k : idx) ++counts[k];
    const double lz = logsumexp(wf);
    for (int64_t i = 0; i < M; ++i) {
      const double expected = S * std::exp(wf[i] - lz);
      NCPFAST_EXPECT(std::fabs(counts[i] - expected) <= 1.0 + 1e-3, "trial %d index %lld: %lld vs %g", trial,
                     static_cast<long long>(i), static_cast<long long>(counts[i]), expected);
    }
  }
}

static void test_invalid_rows() {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<int64_t> idx;
  std::vector<float> all_neg_inf{-inf, -inf, -inf};
  NCPFAST_EXPECT(resample_row(all_neg_inf, 4, false, 1, 0, idx) == -inf, "all -inf row must give -inf");
  for (int64_t k : idx) NCPFAST_EXPECT(k == 0, "invalid row index %lld", static_cast<long long>(k));
  std::vector<float> with_nan{0.f, std::nanf(""), 1.f};
  NCPFAST_EXPECT(std::isnan(resample_row(with_nan, 4, false, 1, 0, idx)), "NaN row must give NaN");
  std::vector<float> with_inf{0.f, inf, 1.f};
  NCPFAST_EXPECT(std::isnan(resample_row(with_inf, 4, false, 1, 0, idx)), "+inf row must give NaN");
  std::vector<float> one_finite{-inf, 3.f, -inf};
  const float lz = resample_row(one_finite, 4, false, 1, 0, idx);
  NCPFAST_EXPECT(lz == 3.f, "one finite weight: log-normaliser %g", lz);
  for (int64_t k : idx) NCPFAST_EXPECT(k == 1, "only index 1 may be drawn, got %lld", static_cast<long long>(k));
  // Extreme but finite weights do not overflow.
  std::vector<float> huge{1e30f, 1e30f - 1e24f, -1e30f};
  NCPFAST_EXPECT(std::isfinite(resample_row(huge, 4, false, 1, 0, idx)), "large finite weights must stay finite");
}

// Precision at large M: a float CDF over the whole row has a spacing of 1/16
// past 2^19, so a step of 0.975 rounds to 1 and the second half of this row
// (2^19 weights 0.975 after 2^19 weights 1) gets half the mass instead of
// 0.4937 (+1.3%, more than 10 standard errors of the multinomial draws here;
// the systematic points resolve it to one point in 10^5). Per-tile float CDFs
// with double offsets resolve a step to 2^-12 of a weight of 1. (The uniforms'
// resolution is tested in test_philox_known_answer.)
static void test_index_probabilities_at_large_m() {
  for (const bool systematic : {false, true}) {
    const int64_t M = 1 << 20, half = M / 2, S = systematic ? 100000 : 1000000;
    std::vector<float> w(M, 0.f);
    for (int64_t i = half; i < M; ++i) w[i] = std::log(0.975f);
    std::vector<int64_t> idx;
    resample_row(w, S, systematic, 11, 3, idx);
    int64_t hits = 0;
    for (int64_t k : idx) hits += k >= half;
    const double weight = std::exp(static_cast<double>(w[half]));
    const double p = weight / (1 + weight);
    if (systematic) {
      // Evenly spaced points: within one point of S p, up to the float CDF
      // of a tile (relative 2^-12 per step at most).
      NCPFAST_EXPECT(std::fabs(hits - S * p) <= 1 + 2.5e-4 * S * p,
                     "systematic, M = 2^20: %lld draws in the second half, expected %.1f", static_cast<long long>(hits),
                     S * p);
    } else {
      const double z = (hits - S * p) / std::sqrt(S * p * (1 - p));
      NCPFAST_EXPECT(std::fabs(z) < 4.5, "multinomial, M = 2^20: P(second half) = %.5f, expected %.5f, z = %.1f",
                     static_cast<double>(hits) / S, p, z);
    }
  }
}

static void test_gather() {
  const int64_t M = 5, S = 3, D = 3;
  std::vector<float> proposals(M * D), out(S * D, -1.f);
  for (int64_t i = 0; i < M * D; ++i) proposals[i] = static_cast<float>(i);
  const int64_t idx[S] = {4, 0, 4};
  sir_gather_row(reinterpret_cast<const unsigned char*>(proposals.data()), idx, S, D * sizeof(float),
                 reinterpret_cast<unsigned char*>(out.data()));
  for (int64_t j = 0; j < S; ++j)
    for (int64_t d = 0; d < D; ++d)
      NCPFAST_EXPECT(out[j * D + d] == proposals[idx[j] * D + d], "gather mismatch at %lld,%lld",
                     static_cast<long long>(j), static_cast<long long>(d));
  sir_gather_row(nullptr, idx, S, 0, nullptr);  // zero-sized proposals: no access at all
}

int main() {
  test_philox_known_answer();
  test_exp_nonpositive();
  test_multinomial_frequencies();
  test_systematic_counts_within_one();
  test_invalid_rows();
  test_index_probabilities_at_large_m();
  test_gather();
  return finish("test_sir_core");
}
