// CUDA backend of ncpfast::mlp_log_ratio: checks, the transposed weights, and
// the launch of the kernel in mlp_log_ratio_kernel.cuh, which writes only the
// logits [B, M]; the row logsumexp follows from them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../mlp_log_ratio.h"
#include "mlp_log_ratio_kernel.cuh"

namespace ncpfast {
namespace ops {
namespace {

using namespace mlp_kernels;

std::tuple<at::Tensor, at::Tensor> mlp_log_ratio_cuda(const at::Tensor& z, at::TensorList weights,
                                                      at::TensorList biases) {
  const int64_t widest = check_mlp_inputs(z, weights, biases);
  TORCH_CHECK_VALUE(static_cast<int64_t>(weights.size()) <= kMaxLayers, "mlp_log_ratio: at most ", kMaxLayers,
                    " layers on CUDA, got ", weights.size());
  const c10::cuda::CUDAGuard guard(z.device());
  const size_t shared_optin_limit = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  const int max_width = mlp_max_width(std::max(shared_optin_limit, core::kDefaultSharedBytesPerBlock));
  TORCH_CHECK_VALUE(widest <= max_width, "mlp_log_ratio: hidden width ", widest,
                    " exceeds what this GPU's shared memory holds for the CUDA kernel (at most ", max_width,
                    "); run the classifier module instead");
  const int64_t B = z.size(0), M = z.size(1), rows = B * M;
  at::Tensor logits = at::empty({B, M}, z.options().dtype(at::kFloat));
  if (rows == 0) return {logits, at::full({B}, -std::numeric_limits<float>::infinity(), logits.options())};
  std::vector<at::Tensor> transposed;  // kept alive until the launch is queued
  Layers layers{};
  layers.count = static_cast<int>(weights.size());
  for (size_t l = 0; l < weights.size(); ++l) {
    transposed.push_back(weights[l].t().contiguous());
    layers.weight_t[l] = transposed.back().data_ptr<float>();
    layers.bias[l] = biases[l].data_ptr<float>();
    layers.in[l] = static_cast<int>(weights[l].size(1));
    layers.out[l] = static_cast<int>(weights[l].size(0));
  }
  const int64_t blocks = (rows + kTileRows - 1) / kTileRows;
  TORCH_CHECK_VALUE(blocks < (int64_t(1) << 31), "mlp_log_ratio: B * M = ", rows, " exceeds the CUDA grid");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "mlp_log_ratio_cuda", [&] {
    const cudaError_t status =
        launch_mlp_log_ratio<scalar_t>(z.data_ptr<scalar_t>(), rows, layers, static_cast<int>(widest),
                                       logits.data_ptr<float>(), shared_optin_limit, at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(status == cudaSuccess, "mlp_log_ratio: CUDA launch failed: ", cudaGetErrorString(status));
  });
  return {logits, at::logsumexp(logits, {1})};
}

}  // namespace

TORCH_LIBRARY_IMPL(ncpfast, CUDA, m) { m.impl("mlp_log_ratio", &mlp_log_ratio_cuda); }

}  // namespace ops
}  // namespace ncpfast
