#include "sir_resample.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

namespace ncpfast {
namespace ops {

void check_sir_resample_inputs(const at::Tensor& log_weights, const at::Tensor& proposals, int64_t num_samples,
                               const at::Tensor& seed) {
  TORCH_CHECK_VALUE(log_weights.dim() == 2, "sir_resample: log_weights must be 2-D [B, M], got shape ",
                    log_weights.sizes());
  const auto dtype = log_weights.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble,
                   "sir_resample: log_weights must be float32, float16, bfloat16 or float64, got ", dtype);
  TORCH_CHECK_VALUE(log_weights.size(1) > 0,
                    "sir_resample: log_weights has M = 0 proposals per row; need at least one");
  TORCH_CHECK_VALUE(proposals.dim() >= 2, "sir_resample: proposals must be [B, M, ...], got shape ", proposals.sizes());
  TORCH_CHECK_VALUE(proposals.size(0) == log_weights.size(0) && proposals.size(1) == log_weights.size(1),
                    "sir_resample: proposals ", proposals.sizes(),
                    " must start with log_weights' [B, M] = ", log_weights.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(proposals.scalar_type()),
                   "sir_resample: proposals must have a floating dtype, got ", proposals.scalar_type());
  TORCH_CHECK_VALUE(num_samples >= 1, "sir_resample: num_samples must be >= 1, got ", num_samples);
  TORCH_CHECK_VALUE(proposals.device() == log_weights.device(), "sir_resample: proposals are on ", proposals.device(),
                    " but log_weights are on ", log_weights.device());
  TORCH_CHECK_VALUE(seed.device() == log_weights.device() && seed.scalar_type() == at::kLong && seed.numel() == 1,
                    "sir_resample: seed must be one int64 on ", log_weights.device(), ", got ", seed.scalar_type(), " ",
                    seed.sizes(), " on ", seed.device());
  TORCH_CHECK_VALUE(log_weights.is_contiguous(), "sir_resample: log_weights must be contiguous");
  TORCH_CHECK_VALUE(proposals.is_contiguous(), "sir_resample: proposals must be contiguous");
}

void check_sir_row_normalizers(const at::Tensor& log_normalizer) {
  int64_t row = -1;
  if (log_normalizer.is_cpu()) {
    const float* values = log_normalizer.data_ptr<float>();
    for (int64_t b = 0; b < log_normalizer.numel() && row < 0; ++b) {
      if (!std::isfinite(values[b])) row = b;
    }
  } else {
    // On a device: one reduction and one small copy back (a synchronisation).
    const at::Tensor bad = ~at::isfinite(log_normalizer);
    if (bad.any().item<bool>()) row = bad.nonzero().select(1, 0)[0].item<int64_t>();
  }
  if (row < 0) return;
  const float value = log_normalizer[row].item<float>();
  TORCH_CHECK_VALUE(false, "sir_resample: row ", row, " of log_weights ",
                    value == -std::numeric_limits<float>::infinity() ? "has every weight -inf: nothing can be drawn"
                                                                     : "contains NaN or +inf");
}

int64_t proposal_row_bytes(const at::Tensor& proposals) {
  int64_t elements = 1;
  for (int64_t d = 2; d < proposals.dim(); ++d) elements *= proposals.size(d);
  return elements * proposals.element_size();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_sir_outputs(const at::Tensor& log_weights,
                                                                    const at::Tensor& proposals, int64_t num_samples) {
  auto sample_shape = proposals.sizes().vec();
  sample_shape[1] = num_samples;
  const int64_t B = log_weights.size(0);
  return {at::empty(sample_shape, proposals.options()),
          at::empty({B, num_samples}, log_weights.options().dtype(at::kLong)),
          at::empty({B}, log_weights.options().dtype(at::kFloat))};
}

}  // namespace ops
}  // namespace ncpfast

// The schema of this op (its backends register their kernels in cpu/ and cuda/).
TORCH_LIBRARY_FRAGMENT(ncpfast, m) {
  // Draws num_samples indices per row with probability softmax(log_weights),
  // gathers the proposals, and returns (samples, indices, log_normalizer).
  // seed: one int64 on the op's device, the key of the Philox stream.
  m.def(
      "sir_resample(Tensor log_weights, Tensor proposals, int num_samples, bool systematic, "
      "Tensor seed) -> (Tensor samples, Tensor indices, Tensor log_normalizer)");
}
