// Swish (SiLU) and its derivative, shared by the CPU and CUDA cell kernels.
//
// The float path avoids libm so CPU loops over it vectorise: the sigmoid is
// built from exp(-|u|) <= 1 (exp_nonpositive on the host, __expf on the
// device), which never overflows for any u.
#pragma once

#include <cmath>

#include "common.h"
#if !defined(__CUDA_ARCH__)
#include "fast_exp.h"
#endif

namespace ncpfast {
namespace core {

NCPFAST_HD float exp_of_minus_abs(float u) {
#if defined(__CUDA_ARCH__)
  return __expf(-fabsf(u));
#else
  return exp_nonpositive(-std::fabs(u));
#endif
}

NCPFAST_HD double exp_of_minus_abs(double u) { return exp(-fabs(u)); }

// sigmoid(u) = 1 / (1 + e^-u) for u >= 0 and e^u / (1 + e^u) below: both
// forms only ever exponentiate a non-positive number.
template <typename T>
NCPFAST_HD T sigmoid(T u) {
  const T e = exp_of_minus_abs(u);
  const T inverse = T(1) / (T(1) + e);
  return u >= T(0) ? inverse : e * inverse;
}

template <typename T>
NCPFAST_HD T swish(T u) {
  return u * sigmoid(u);
}

// d swish / du = s (1 + u (1 - s)), s = sigmoid(u).
template <typename T>
NCPFAST_HD T swish_grad(T u) {
  const T s = sigmoid(u);
  return s * (T(1) + u * (T(1) - s));
}

}  // namespace core
}  // namespace ncpfast
