// Native test of the SIR CUDA kernel against the CPU core: both draw from the
// same Philox stream and build the CDF in the same tiles, so every GPU index
// must be a valid draw of the CPU's CDF up to float summation order, and
// every sample must be the proposal its index names; and of the block scan:
// a zero (a -inf weight) gets no CDF step anywhere in a tile. Buffers have
// their exact sizes, so an overrun reaches the sanitizers. Exits 77
// (skipped) when no CUDA device is present; on a GPU machine run it under
// compute-sanitizer (memcheck, racecheck) as well.
#include "cuda_compat.h"

#include <cmath>
#include <random>
#include <vector>

#include "../ops/sir_resample/cuda/sir_resample_kernel.cuh"
#include "check.h"

using namespace ncpfast::core;

#define CUDA_OK(call)                                                                       \
  do {                                                                                      \
    const cudaError_t status_ = (call);                                                     \
    if (status_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(status_)); \
      return false;                                                                         \
    }                                                                                       \
  } while (0)

// The block scan alone: one block scans `input` (length <= kSirTile).
__global__ void scan_kernel(const float* input, int length, float* output) {
  NCPFAST_STATIC_SHARED(float, tile, [kSirTile]);
  NCPFAST_STATIC_SHARED(float, chunk_scratch, [kSirThreads]);
  NCPFAST_STATIC_SHARED(float, warp_scratch, [kSirThreads / 32]);
  for (int i = threadIdx.x; i < length; i += kSirThreads) tile[i] = input[i];
  __syncthreads();
  block_inclusive_scan(tile, length, chunk_scratch, warp_scratch);
  for (int i = threadIdx.x; i < length; i += kSirThreads) output[i] = tile[i];
}

// Weights of widely varying size (so that sums round) with zeros at every
// chunk start, in whole chunks, in a whole warp's chunks and at the end: each
// zero's CDF value must equal its predecessor's to the bit (0 at the start),
// or a target could land on it; the rest must be the prefix sum.
static bool run_scan_case(int length, uint64_t case_seed) {
  std::mt19937 rng(static_cast<unsigned>(case_seed));
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> input(length), output(length);
  for (int i = 0; i < length; ++i) {
    const int chunk = i / kSirItemsPerThread;
    const bool zero =
        i % kSirItemsPerThread == 0 || (chunk >= 40 && chunk < 43) || (chunk >= 160 && chunk < 192) || i >= length - 5;
    input[i] = zero ? 0.f : std::exp(normal(rng));
  }
  float *d_in, *d_out;
  CUDA_OK(cudaMalloc(&d_in, length * sizeof(float)));
  CUDA_OK(cudaMalloc(&d_out, length * sizeof(float)));
  CUDA_OK(cudaMemcpy(d_in, input.data(), length * sizeof(float), cudaMemcpyHostToDevice));
  NCPFAST_LAUNCH(scan_kernel, 1, kSirThreads, 0, nullptr, d_in, length, d_out);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaMemcpy(output.data(), d_out, length * sizeof(float), cudaMemcpyDeviceToHost));
  double exact = 0, total = 0;
  for (float x : input) total += x;
  int64_t zero_steps = 0;
  for (int i = 0; i < length; ++i) {
    exact += input[i];
    if (input[i] == 0.f && output[i] != (i == 0 ? 0.f : output[i - 1])) ++zero_steps;
    NCPFAST_EXPECT(std::fabs(output[i] - exact) <= 1e-5 * total, "scan length %d: cdf[%d] = %.9g, exact %.9g", length,
                   i, output[i], exact);
  }
  NCPFAST_EXPECT(zero_steps == 0, "scan length %d: %lld zero weights got a CDF step (drawable)", length,
                 static_cast<long long>(zero_steps));
  cudaFree(d_in);
  cudaFree(d_out);
  return true;
}

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
  CUDA_OK(cudaMalloc(&d_p, proposals.size() * sizeof(float)));
  CUDA_OK(cudaMalloc(&d_out, B * S * D * sizeof(float)));
  CUDA_OK(cudaMalloc(&d_lz, B * sizeof(float)));
  CUDA_OK(cudaMalloc(&d_idx, B * S * sizeof(int64_t)));
  CUDA_OK(cudaMalloc(&d_seed, sizeof(int64_t)));
  CUDA_OK(cudaMemcpy(d_w, w.data(), w.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(d_p, proposals.data(), proposals.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(d_seed, &seed, sizeof(int64_t), cudaMemcpyHostToDevice));
  // The kernel writes no samples for a row of only -inf weights (the op reports
  // that row instead); zeroed here so that copying every row back reads no
  // uninitialised memory (compute-sanitizer's initcheck).
  CUDA_OK(cudaMemset(d_out, 0, B * S * D * sizeof(float)));
  CUDA_OK(launch_sir_resample<float>(d_w, d_p, B, M, S, D * sizeof(float), systematic, d_seed, d_out, d_idx, d_lz,
                                     nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<int64_t> idx(B * S);
  std::vector<float> out(B * S * D), lz(B);
  CUDA_OK(cudaMemcpy(idx.data(), d_idx, idx.size() * sizeof(int64_t), cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(out.data(), d_out, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(lz.data(), d_lz, lz.size() * sizeof(float), cudaMemcpyDeviceToHost));

  std::vector<float> cdf(M);
  std::vector<double> tile_offsets(sir_tile_count(M) + 1);
  std::vector<int64_t> cpu_idx(S);
  int64_t mismatches = 0;
  for (int64_t b = 0; b < B; ++b) {
    const float cpu_lz = sir_resample_row_cpu(w.data() + b * M, M, S, systematic, static_cast<uint64_t>(seed), b,
                                              cdf.data(), tile_offsets.data(), cpu_idx.data());
    if (cpu_lz == -INFINITY) {  // every weight -inf: nothing to draw, indices 0, no gather
      NCPFAST_EXPECT(lz[b] == -INFINITY, "row %lld: lz %g for a row of -inf weights", static_cast<long long>(b), lz[b]);
      for (int64_t j = 0; j < S; ++j)
        NCPFAST_EXPECT(idx[b * S + j] == 0, "row %lld: index of an empty row", static_cast<long long>(b));
      continue;
    }
    NCPFAST_EXPECT(std::fabs(cpu_lz - lz[b]) < 1e-5f * (1 + std::fabs(cpu_lz)), "row %lld lz %g vs %g",
                   static_cast<long long>(b), lz[b], cpu_lz);
    // The CPU's CDF at index k in the row's mass: its tile's offset plus the
    // tile-local float CDF.
    const auto cdf_at = [&](int64_t k) { return k < 0 ? 0.0 : tile_offsets[k / kSirTile] + cdf[k]; };
    // The two sides sum a tile in different orders (the CPU sequentially, the
    // GPU by chunks), so a target within rounding of a CDF step may land on
    // the neighbouring index. Every GPU index must therefore be a valid
    // inverse-CDF draw of the CPU's CDF up to that rounding: a few sqrt(tile)
    // float epsilons of each tile's mass, accumulated over the tiles before.
    const double total = tile_offsets[sir_tile_count(M)];
    const double tile_mass = total / static_cast<double>(sir_tile_count(M));
    for (int64_t j = 0; j < S; ++j) {
      const int64_t k = idx[b * S + j];
      NCPFAST_EXPECT(k >= 0 && k < M && std::isfinite(w[b * M + k]), "row %lld: bad index %lld",
                     static_cast<long long>(b), static_cast<long long>(k));
      if (k < 0 || k >= M) continue;
      if (k != cpu_idx[j]) {
        ++mismatches;
        const double target =
            sir_target_fraction(static_cast<uint64_t>(seed), static_cast<uint64_t>(b), j, S, systematic) * total;
        const double tolerance = static_cast<double>(k / kSirTile + 1) * 8.0 *
                                 std::sqrt(static_cast<double>(std::min<int64_t>(M, kSirTile))) * 1.2e-7 * tile_mass;
        NCPFAST_EXPECT(cdf_at(k - 1) - tolerance <= target && target < cdf_at(k) + tolerance,
                       "row %lld sample %lld: GPU index %lld (CDF %.9g..%.9g) vs CPU %lld for target %.9g",
                       static_cast<long long>(b), static_cast<long long>(j), static_cast<long long>(k), cdf_at(k - 1),
                       cdf_at(k), static_cast<long long>(cpu_idx[j]), target);
      }
      for (int64_t d = 0; d < D; ++d) {
        NCPFAST_EXPECT(out[(b * S + j) * D + d] == proposals[(b * M + k) * D + d], "gather row %lld",
                       static_cast<long long>(b));
      }
    }
  }
  // Rounding moves few targets (about 1% at M = 20,000); a wrong index moves most.
  NCPFAST_EXPECT(mismatches <= (B * S) / 20 + 1, "B=%lld M=%lld S=%lld: %lld CPU/GPU index mismatches",
                 static_cast<long long>(B), static_cast<long long>(M), static_cast<long long>(S),
                 static_cast<long long>(mismatches));
  cudaFree(d_w);
  cudaFree(d_p);
  cudaFree(d_out);
  cudaFree(d_lz);
  cudaFree(d_idx);
  cudaFree(d_seed);
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
  for (const int length : {kSirItemsPerThread * kSirThreads, 3001, 17}) {
    NCPFAST_EXPECT(run_scan_case(length, 5 + length), "CUDA error in the scan of length %d", length);
  }
  const int64_t shapes[][4] = {{1, 1, 1, 1},        {3, 16, 5, 64},   {4, 4096, 300, 3}, {2, 5000, 7, 1280},
                               {2, 20000, 1000, 2}, {64, 512, 1, 64}, {1, 40000, 300, 1}};
  for (const auto& s : shapes) {
    for (int systematic = 0; systematic < 2; ++systematic) {
      NCPFAST_EXPECT(run_case(s[0], s[1], s[2], s[3], systematic != 0, 17 + s[1]), "CUDA error in case M=%lld",
                     static_cast<long long>(s[1]));
    }
  }
  return finish(kTestName);
}
