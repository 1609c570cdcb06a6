// CUDA backend of ncpfast::sir_resample: the kernel is torch-free
// (sir_resample_kernel.cuh, beside this file); this file checks, allocates,
// launches on the current stream and reports invalid rows (outside CUDA graph
// capture).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../sir_resample.h"
#include "sir_resample_kernel.cuh"

namespace ncpfast {
namespace ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> sir_resample_cuda(const at::Tensor& log_weights,
                                                                 const at::Tensor& proposals, int64_t num_samples,
                                                                 bool systematic, const at::Tensor& seed) {
  check_sir_resample_inputs(log_weights, proposals, num_samples, seed);
  const c10::cuda::CUDAGuard device_guard(log_weights.device());
  auto [samples, indices, log_normalizer] = allocate_sir_outputs(log_weights, proposals, num_samples);
  const int64_t B = log_weights.size(0), M = log_weights.size(1);
  TORCH_CHECK_VALUE(B <= std::numeric_limits<int>::max(), "sir_resample: B = ", B, " rows exceed the CUDA grid limit");
  const int64_t row_bytes = proposal_row_bytes(proposals);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, log_weights.scalar_type(), "sir_resample_cuda", [&] {
    const cudaError_t status =
        core::launch_sir_resample<scalar_t>(log_weights.data_ptr<scalar_t>(), proposals.data_ptr(), B, M, num_samples,
                                            row_bytes, systematic, seed.data_ptr<int64_t>(), samples.data_ptr(),
                                            indices.data_ptr<int64_t>(), log_normalizer.data_ptr<float>(), stream);
    TORCH_CHECK(status == cudaSuccess, "sir_resample: CUDA launch failed: ", cudaGetErrorString(status));
  });
  // One small device-to-host read (B floats reduced to a flag): the price of
  // reporting a bad row as an error instead of returning garbage. A stream
  // being captured into a CUDA graph cannot synchronise: there the check is
  // skipped, and a bad row shows as a NaN or -inf log-normaliser (its indices
  // 0, its samples not written).
  if (c10::cuda::captureStatusMayInitCtx(stream) == c10::cuda::CaptureStatus::None) {
    check_sir_row_normalizers(log_normalizer);
  }
  return {samples, indices, log_normalizer};
}

}  // namespace

TORCH_LIBRARY_IMPL(ncpfast, CUDA, m) { m.impl("sir_resample", &sir_resample_cuda); }

}  // namespace ops
}  // namespace ncpfast
