// CPU backend of ncpfast::sir_resample: rows in parallel (at::parallel_for,
// OpenMP in torch's builds), one reusable CDF buffer (and tile offsets) per worker.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../../../core/sir_resample.h"
#include "../sir_resample.h"

namespace ncpfast {
namespace ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> sir_resample_cpu(const at::Tensor& log_weights,
                                                                const at::Tensor& proposals, int64_t num_samples,
                                                                bool systematic, const at::Tensor& seed) {
  check_sir_resample_inputs(log_weights, proposals, num_samples, seed);
  auto [samples, indices, log_normalizer] = allocate_sir_outputs(log_weights, proposals, num_samples);
  const int64_t B = log_weights.size(0), M = log_weights.size(1), S = num_samples;
  const int64_t row_bytes = proposal_row_bytes(proposals);
  const uint64_t seed_value = static_cast<uint64_t>(seed.item<int64_t>());
  const auto* proposal_bytes = static_cast<const unsigned char*>(proposals.data_ptr());
  auto* sample_bytes = static_cast<unsigned char*>(samples.data_ptr());
  int64_t* index_ptr = indices.data_ptr<int64_t>();
  float* normalizer_ptr = log_normalizer.data_ptr<float>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, log_weights.scalar_type(), "sir_resample_cpu", [&] {
    const scalar_t* weights = log_weights.data_ptr<scalar_t>();
    // Grain: enough rows per task that a task does ~32k weight reads.
    const int64_t grain = std::max<int64_t>(1, 32768 / M);
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> cdf(static_cast<size_t>(M));
      std::vector<double> tile_offsets(static_cast<size_t>(core::sir_tile_count(M) + 1));
      for (int64_t row = begin; row < end; ++row) {
        normalizer_ptr[row] = core::sir_resample_row_cpu(weights + row * M, M, S, systematic, seed_value, row,
                                                         cdf.data(), tile_offsets.data(), index_ptr + row * S);
        core::sir_gather_row(proposal_bytes + row * M * row_bytes, index_ptr + row * S, S, row_bytes,
                             sample_bytes + row * S * row_bytes);
      }
    });
  });
  check_sir_row_normalizers(log_normalizer);
  return {samples, indices, log_normalizer};
}

}  // namespace

TORCH_LIBRARY_IMPL(ncpfast, CPU, m) { m.impl("sir_resample", &sir_resample_cpu); }

}  // namespace ops
}  // namespace ncpfast
