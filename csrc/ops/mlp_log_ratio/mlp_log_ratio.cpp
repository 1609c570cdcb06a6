#include "mlp_log_ratio.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace ncpfast {
namespace ops {

int64_t check_mlp_inputs(const at::Tensor& z, at::TensorList weights, at::TensorList biases) {
  const char* op = "mlp_log_ratio";
  TORCH_CHECK_VALUE(z.dim() == 3, op, ": z must be 3-D [B, M, D], got shape ", z.sizes());
  const auto dtype = z.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || ((dtype == at::kHalf || dtype == at::kBFloat16) && z.is_cuda()), op,
                   ": z must be float32 (or float16/bfloat16 on CUDA), got ", dtype, " on ", z.device());
  TORCH_CHECK_VALUE(z.is_contiguous(), op, ": z must be contiguous");
  TORCH_CHECK_VALUE(weights.size() >= 2 && weights.size() == biases.size(), op,
                    ": need at least two linear layers and one bias per weight, got ", weights.size(), " weights and ",
                    biases.size(), " biases");
  int64_t width = z.size(2), widest = 0;
  for (size_t l = 0; l < weights.size(); ++l) {
    const at::Tensor& w = weights[l];
    const at::Tensor& b = biases[l];
    TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == width, op, ": weights[", l, "] must be [out, ", width,
                      "] (its input is the previous layer's output), got ", w.sizes());
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == w.size(0), op, ": biases[", l, "] must be [", w.size(0), "], got ",
                      b.sizes());
    for (const at::Tensor* t : {&w, &b}) {
      TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat, op, ": layer ", l, " parameters must be float32, got ",
                       t->scalar_type());
      TORCH_CHECK_VALUE(t->device() == z.device(), op, ": layer ", l, " parameters are on ", t->device(), ", z on ",
                        z.device());
      TORCH_CHECK_VALUE(t->is_contiguous(), op, ": layer ", l, " parameters must be contiguous");
    }
    width = w.size(0);
    if (l + 1 < weights.size()) widest = std::max(widest, width);
  }
  TORCH_CHECK_VALUE(width == 1, op, ": the last layer must output one logit, got ", width);
  return widest;
}

}  // namespace ops
}  // namespace ncpfast

// The schema of this op (its backends register their kernels in cpu/ and cuda/).
TORCH_LIBRARY_FRAGMENT(ncpfast, m) {
  // The flat NCP classifier on [B, M, D] proposals: an MLP, SiLU between its
  // linear layers (weights[l] [out, in], biases[l] [out]), one logit out.
  // Returns the log-ratios [B, M] and each row's logsumexp [B] (float32).
  m.def("mlp_log_ratio(Tensor z, Tensor[] weights, Tensor[] biases) -> (Tensor log_ratio, Tensor row_logsumexp)");
}
