// Native test of the SIR CUDA kernel against the CPU core: both draw from the
// same Philox stream, so on weights without near-ties the indices must match
// exactly, and every sample must be the proposal its index names. Exits 77
// (skipped) when no CUDA device is present; on a GPU machine run it under
// compute-sanitizer (memcheck, racecheck) as well.
#include "cuda_compat.h"

#include <cmath>
#include <random>
#include <vector>

#include "check.h"
#include "sir_resample_cuda.cuh"

using namespace ncpfast::core;

#define CUDA_OK(call)                                                               \
  do {                                                                              \
    const cudaError_t status_ = (call);                                             \
    if (status_ != cudaSuccess) {                                                   \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(status_)); \
      return false;                                                                 \
    }                                                                               \
  } while (0)

static bool run_case(int64_t B, int64_t M, int64_t S, int64_t D, bool systematic, uint64_t case_seed) {
  std::mt19937 rng(static_cast<unsigned>(case_seed));
  std::normal_distribution<float> normal(0.f, 2.f);
  std::vector<float> w(B * M), proposals(B * M * D);
  for (auto& x : w) x = normal(rng);
  for (int64_t i = 0; i < B * M; i += 7) w[i] = -INFINITY;  // never drawn
  for (size_t i = 0; i < proposals.size(); ++i) proposals[i] = static_cast<float>(i);
  const int64_t seed = static_cast<int64_t>(case_seed * 2654435761u);

  float *d_w, *d_p, *d_out, *d_lz;
  int64_t *d_idx, *d_seed;
  CUDA_OK(cudaMalloc(&d_w, w.size() * sizeof(float)));
  CUDA_OK(cudaMalloc(&d_p, proposals.size() * sizeof(float) + 16));
  CUDA_OK(cudaMalloc(&d_out, B * S * D * sizeof(float) + 16));
  CUDA_OK(cudaMalloc(&d_lz, B * sizeof(float)));
  CUDA_OK(cudaMalloc(&d_idx, B * S * sizeof(int64_t)));
  CUDA_OK(cudaMalloc(&d_seed, sizeof(int64_t)));
  CUDA_OK(cudaMemcpy(d_w, w.data(), w.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(d_p, proposals.data(), proposals.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(d_seed, &seed, sizeof(int64_t), cudaMemcpyHostToDevice));
  CUDA_OK(launch_sir_resample<float>(d_w, d_p, B, M, S, D * sizeof(float), systematic, d_seed, d_out,
                                     d_idx, d_lz, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<int64_t> idx(B * S);
  std::vector<float> out(B * S * D), lz(B);
  CUDA_OK(cudaMemcpy(idx.data(), d_idx, idx.size() * sizeof(int64_t), cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(out.data(), d_out, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(lz.data(), d_lz, lz.size() * sizeof(float), cudaMemcpyDeviceToHost));

  std::vector<float> cdf(M);
  std::vector<int64_t> cpu_idx(S);
  int64_t mismatches = 0;
  for (int64_t b = 0; b < B; ++b) {
    const float cpu_lz = sir_resample_row_cpu(w.data() + b * M, M, S, systematic, static_cast<uint64_t>(seed),
                                              b, cdf.data(), cpu_idx.data());
    if (cpu_lz == -INFINITY) {  // every weight -inf: nothing to draw, indices 0, no gather
      NCPFAST_EXPECT(lz[b] == -INFINITY, "row %lld: lz %g for a row of -inf weights", static_cast<long long>(b), lz[b]);
      for (int64_t j = 0; j < S; ++j) NCPFAST_EXPECT(idx[b * S + j] == 0, "row %lld: index of an empty row", static_cast<long long>(b));
      continue;
    }
    NCPFAST_EXPECT(std::fabs(cpu_lz - lz[b]) < 1e-4f * (1 + std::fabs(cpu_lz)), "row %lld lz %g vs %g",
               static_cast<long long>(b), lz[b], cpu_lz);
    // The two sides sum the CDF in different orders (the CPU sequentially, the
    // GPU by tiles and a block scan), so a target within rounding of a CDF step
    // may land on the neighbouring index. Every GPU index must therefore be a
    // valid inverse-CDF draw of the CPU's CDF up to that rounding: a few
    // sqrt(M) float epsilons of the total (the sequential sum's typical error).
    const float total = cdf[M - 1];
    const float tolerance = 8.f * std::sqrt(static_cast<float>(M)) * 1.2e-7f * total;
    for (int64_t j = 0; j < S; ++j) {
      const int64_t k = idx[b * S + j];
      NCPFAST_EXPECT(k >= 0 && k < M && std::isfinite(w[b * M + k]), "row %lld: bad index %lld",
                 static_cast<long long>(b), static_cast<long long>(k));
      if (k < 0 || k >= M) continue;
      if (k != cpu_idx[j]) {
        ++mismatches;
        const float target = sir_target_fraction(static_cast<uint64_t>(seed), static_cast<uint64_t>(b), j, S,
                                                 systematic) * total;
        const float below = k == 0 ? 0.f : cdf[k - 1];
        NCPFAST_EXPECT(below - tolerance <= target && target < cdf[k] + tolerance,
                   "row %lld sample %lld: GPU index %lld (CDF %g..%g) vs CPU %lld for target %g",
                   static_cast<long long>(b), static_cast<long long>(j), static_cast<long long>(k), below, cdf[k],
                   static_cast<long long>(cpu_idx[j]), target);
      }
      for (int64_t d = 0; d < D; ++d) {
        NCPFAST_EXPECT(out[(b * S + j) * D + d] == proposals[(b * M + k) * D + d], "gather row %lld", static_cast<long long>(b));
      }
    }
  }
  // Rounding moves few targets (about 1% at M = 20,000); a wrong index moves most.
  NCPFAST_EXPECT(mismatches <= (B * S) / 20 + 1, "B=%lld M=%lld S=%lld: %lld CPU/GPU index mismatches",
             static_cast<long long>(B), static_cast<long long>(M), static_cast<long long>(S),
             static_cast<long long>(mismatches));
  cudaFree(d_w); cudaFree(d_p); cudaFree(d_out); cudaFree(d_lz); cudaFree(d_idx); cudaFree(d_seed);
  return true;
}

#if defined(NCPFAST_CUDA_EMULATION)
constexpr const char* kTestName = "test_sir_cuda (CPU emulation)";
#else
constexpr const char* kTestName = "test_sir_cuda";
#endif

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("%s: no CUDA device, skipped\n", kTestName);
    return 77;
  }
  const int64_t shapes[][4] = {{1, 1, 1, 1}, {3, 16, 5, 64}, {4, 4096, 300, 3}, {2, 5000, 7, 1280},
                               {2, 20000, 1000, 2}, {64, 512, 1, 64}};
  for (const auto& s : shapes) {
    for (int systematic = 0; systematic < 2; ++systematic) {
      NCPFAST_EXPECT(run_case(s[0], s[1], s[2], s[3], systematic != 0, 17 + s[1]), "CUDA error in case M=%lld",
                 static_cast<long long>(s[1]));
    }
  }
  return finish(kTestName);
}
