// Torch-free helpers shared by the CPU and CUDA kernel cores.
//
// Everything under csrc/core/ compiles without PyTorch: the extension
// instantiates these templates on tensor data pointers, and the native tests in
// csrc/tests/ (built by CMake, run under ASan/UBSan) instantiate them directly.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define NCP_HD __host__ __device__ __forceinline__
#else
#define NCP_HD inline
#endif

namespace ncpfast {
namespace core {

// Converts any supported element type (float, double, and the half types,
// which all define a conversion to float) to the float used for arithmetic.
template <typename T>
NCP_HD float to_float(T x) {
  return static_cast<float>(x);
}

}  // namespace core
}  // namespace ncpfast
