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
#define NCP_HD inline __attribute__((always_inline))
#endif

// CPU loops that must vectorise with AVX2/FMA where the machine has it but
// still run on any x86-64: the function is compiled twice (x86-64-v3 and the
// baseline) and the loader picks one (GCC/Clang target_clones, an ifunc).
// Everything it calls must be force-inlined (NCP_HD / NCP_ALWAYS_INLINE) to
// be compiled for the chosen target too.
#if !defined(__CUDACC__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(NCP_NO_MULTIVERSION)
#define NCP_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define NCP_CPU_MULTIVERSION
#endif
#if defined(__GNUC__) || defined(__clang__)
#define NCP_ALWAYS_INLINE __attribute__((always_inline))
#else
#define NCP_ALWAYS_INLINE
#endif

namespace ncpfast {
namespace core {

// Converts any supported element type (float, double, and the half types,
// which all define a conversion to float) to the float used for arithmetic.
template <typename T>
NCP_HD float to_float(T x) {
  return static_cast<float>(x);
}

// Runs f(p) for p in [begin, end) in a multiversioned loop; pass a lambda
// marked NCP_ALWAYS_INLINE so its body is compiled for each target.
template <typename F>
NCP_CPU_MULTIVERSION void for_each_plane(int64_t begin, int64_t end, const F& f) {
  for (int64_t p = begin; p < end; ++p) f(p);
}

}  // namespace core
}  // namespace ncpfast
