// ncpfast::sir_resample: what both backends share (argument checks and the
// report of invalid rows). Each backend registers itself in its own folder.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace ncpfast {
namespace ops {

// Checks shapes, dtypes, devices and sizes; names the argument at fault.
void check_sir_resample_inputs(const at::Tensor& log_weights, const at::Tensor& proposals, int64_t num_samples,
                               const at::Tensor& seed);

// Raises if a row's log-normaliser is not finite, naming the first such row
// and why (every weight -inf, or a NaN/+inf weight).
void check_sir_row_normalizers(const at::Tensor& log_normalizer);

// Bytes of one proposal: the product of proposals' trailing sizes times the
// element size (valid for B = 0 too).
int64_t proposal_row_bytes(const at::Tensor& proposals);

// Output shapes: samples [B, S, ...], indices [B, S], log_normalizer [B].
std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_sir_outputs(const at::Tensor& log_weights,
                                                                    const at::Tensor& proposals, int64_t num_samples);

}  // namespace ops
}  // namespace ncpfast
