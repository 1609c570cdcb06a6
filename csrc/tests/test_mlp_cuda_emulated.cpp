// The flat-latent log-ratio CUDA kernel (mlp_log_ratio_kernel.cuh), run on the
// CPU emulation of the CUDA execution model (cuda_emulation.h), against the
// MLP evaluated directly in double precision. Cases: a row count that is not
// a multiple of the kernel's row tile, hidden widths below, at and above the
// block's thread count, at the default 48 KiB of shared memory and past it
// (the launcher opts in; the emulation, like a device, refuses a launch past
// 48 KiB without it), each row-group
// instantiation (widest layer <= 32, 64, 128, above), widths that are and
// are not multiples of the 4-column vector path, one to three hidden layers,
// D from 1 to 1,280 (one to twenty staged chunks, a partial last chunk).
#include "cuda_emulation.h"

#include <cmath>
#include <random>
#include <vector>

#include "../ops/mlp_log_ratio/cuda/mlp_log_ratio_kernel.cuh"
#include "check.h"

using namespace ncpfast::ops::mlp_kernels;

namespace {

// An H100/H200's sharedMemPerBlockOptin: 227 KiB.
constexpr size_t kH200SharedOptin = 227 * 1024;

double swish_ref(double u) { return u / (1 + std::exp(-u)); }

// widths: D, hidden..., 1. T: the proposals' storage type (float, or the
// compiler's IEEE half standing in for c10::Half; the reference uses the
// rounded proposals, the kernel computes in float either way).
template <typename T = float>
void run_case(int64_t rows, const std::vector<int>& widths) {
  const int layers_count = static_cast<int>(widths.size()) - 1;
  const int D = widths[0];
  std::vector<std::vector<float>> weight_t(layers_count), bias(layers_count);
  int widest = 0;
  Layers layers{};
  layers.count = layers_count;
  for (int l = 0; l < layers_count; ++l) {
    weight_t[l] = random_values(int64_t(widths[l]) * widths[l + 1], 1.f / std::sqrt(float(widths[l])));
    bias[l] = random_values(widths[l + 1], 0.1f);
    layers.weight_t[l] = weight_t[l].data();
    layers.bias[l] = bias[l].data();
    layers.in[l] = widths[l];
    layers.out[l] = widths[l + 1];
    if (l + 1 < layers_count) widest = std::max(widest, widths[l + 1]);
  }
  std::vector<float> z = random_values(rows * D, 1.f);
  std::vector<T> z_stored(z.begin(), z.end());
  z.assign(z_stored.begin(), z_stored.end());
  std::vector<float> logits(rows);
  const cudaError_t status =
      launch_mlp_log_ratio<T>(z_stored.data(), rows, layers, widest, logits.data(), kH200SharedOptin, nullptr);
  NCPFAST_EXPECT(status == cudaSuccess, "launch failed for widest %d", widest);

  double worst = 0;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> h(z.begin() + r * D, z.begin() + (r + 1) * D);
    for (int l = 0; l < layers_count; ++l) {
      std::vector<double> next(widths[l + 1]);
      for (int o = 0; o < widths[l + 1]; ++o) {
        double acc = bias[l][o];
        for (int k = 0; k < widths[l]; ++k) acc += h[k] * weight_t[l][int64_t(k) * widths[l + 1] + o];
        next[o] = l + 1 < layers_count ? swish_ref(acc) : acc;
      }
      h.swap(next);
    }
    worst = std::max(worst, std::fabs(logits[r] - h[0]) / (1 + std::fabs(h[0])));
  }
  NCPFAST_EXPECT(worst < 1e-4, "rows=%lld D=%d layers=%d widest=%d, %zu-byte proposals: worst relative error %g",
                 (long long)rows, D, layers_count, widest, sizeof(T), worst);
}

// The launcher's choice of shared memory: within 48 KiB up to width 352, by
// opting in past it up to the device's limit, and no launch past that.
void test_shared_memory_limits() {
  NCPFAST_EXPECT(mlp_max_width(ncpfast::core::kDefaultSharedBytesPerBlock) == 352, "default limit: %d",
                 mlp_max_width(ncpfast::core::kDefaultSharedBytesPerBlock));
  NCPFAST_EXPECT(mlp_max_width(kH200SharedOptin) == 1784, "H200 limit: %d", mlp_max_width(kH200SharedOptin));
  NCPFAST_EXPECT(mlp_shared_bytes(352) <= ncpfast::core::kDefaultSharedBytesPerBlock &&
                     mlp_shared_bytes(353) > ncpfast::core::kDefaultSharedBytesPerBlock,
                 "352 is the widest layer within 48 KiB");
  NCPFAST_EXPECT(mlp_shared_bytes(1784) <= kH200SharedOptin && mlp_shared_bytes(1785) > kH200SharedOptin,
                 "1784 is the widest layer within 227 KiB");
  Layers layers{};
  layers.count = 2;
  float logit = 0.f;
  // Too wide for the limit: refused before any launch (the pointers are never read).
  NCPFAST_EXPECT(
      launch_mlp_log_ratio<float>(nullptr, 1, layers, 1785, &logit, kH200SharedOptin, nullptr) == cudaErrorInvalidValue,
      "width 1785 past the H200 limit must be refused");
  NCPFAST_EXPECT(launch_mlp_log_ratio<float>(nullptr, 1, layers, 512, &logit, 0, nullptr) == cudaErrorInvalidValue,
                 "width 512 on a device without opt-in must be refused");
}

}  // namespace

int main() {
  test_shared_memory_limits();
  run_case(1, {1, 3, 1});
  run_case(21, {5, 20, 1});         // a partial row tile
  run_case(40, {50, 256, 256, 1});  // the default classifier's widths
  run_case(33, {7, 300, 64, 1});    // wider than the block: threads own two units
  run_case(17, {3, 16, 24, 8, 1});  // three hidden layers: the ping-pong buffers swap twice
  run_case(20, {1280, 64, 64, 1});  // D = 20x8x8: proposals staged in 20 chunks of columns
  run_case(35, {130, 30, 44, 1});   // a partial last chunk; widths not multiples of 4 (scalar path)
  run_case(16, {66, 352, 8, 1});    // the widest hidden layer within the default 48 KiB
  run_case(19, {40, 353, 1});       // the narrowest that needs the opt-in
  run_case(21, {30, 512, 512, 1});  // a width-512 classifier (68 KiB)
#if NCPFAST_HAVE_FLOAT16
  run_case<_Float16>(21, {130, 64, 64, 1});  // half proposals, converted as they are staged
#endif
  // Narrow layers run in row groups: 8 groups of 32 units, 4 of 64, 2 of 128
  // (with a layer narrower than the group's units, and rows not a multiple of the groups).
  run_case(13, {9, 32, 20, 1});
  run_case(30, {50, 64, 64, 1});
  run_case(27, {12, 100, 128, 1});
  return finish("test_mlp_cuda_emulated");
}
