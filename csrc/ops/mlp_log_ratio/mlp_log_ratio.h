// ncpfast::mlp_log_ratio: the flat-latent NCP classifier (an MLP with SiLU
// between its linear layers, one logit out) evaluated on [B, M, D] proposals,
// plus each row's logsumexp. What both backends share.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace ncpfast {
namespace ops {

// Checks z [B, M, D] and the layer chain D -> H_0 -> ... -> 1; returns the
// widest hidden layer.
int64_t check_mlp_inputs(const at::Tensor& z, at::TensorList weights, at::TensorList biases);

}  // namespace ops
}  // namespace ncpfast
