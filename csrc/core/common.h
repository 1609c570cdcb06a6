// Torch-free helpers shared by the CPU and CUDA kernel cores.
//
// Everything under csrc/core/ compiles without PyTorch: the extension
// instantiates these templates on tensor data pointers, and the native tests in
// csrc/tests/ (built by CMake, run under ASan/UBSan) instantiate them directly.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define NCPFAST_HD __host__ __device__ __forceinline__
#else
#define NCPFAST_HD inline __attribute__((always_inline))
#endif

// CPU loops that must vectorise with the machine's widest vectors but still
// run on any x86-64: the function is compiled several times and the loader
// picks one (GCC/Clang target_clones, an ifunc). Everything it calls must be
// force-inlined (NCPFAST_HD / NCPFAST_ALWAYS_INLINE) to be compiled for the chosen
// target too. Two sets of targets:
//   NCPFAST_CPU_CLONES_WIDE  x86-64-v4 (AVX-512), x86-64-v3 (AVX2/FMA), baseline:
//                        elementwise loops and reductions, which AVX-512 speeds up;
//   NCPFAST_CPU_CLONES_AVX2  x86-64-v3 and baseline: the depthwise conv, whose
//                        register blocks are one AVX2 vector (8 floats) wide and
//                        ran slower as AVX-512 code (docs/design-notes.md).
#if !defined(__CUDACC__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(NCPFAST_NO_MULTIVERSION)
#define NCPFAST_CPU_CLONES_WIDE __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define NCPFAST_CPU_CLONES_AVX2 __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define NCPFAST_CPU_CLONES_WIDE
#define NCPFAST_CPU_CLONES_AVX2
#endif
#if defined(__GNUC__) || defined(__clang__)
#define NCPFAST_ALWAYS_INLINE __attribute__((always_inline))
#else
#define NCPFAST_ALWAYS_INLINE
#endif

namespace ncpfast {
namespace core {

// Converts any supported element type (float, double, and the half types,
// which all define a conversion to float) to the float used for arithmetic.
template <typename T>
NCPFAST_HD float to_float(T x) {
  return static_cast<float>(x);
}

// Runs f(p) for p in [begin, end) in a multiversioned loop; pass a lambda
// marked NCPFAST_ALWAYS_INLINE so its body is compiled for each target.
template <typename F>
NCPFAST_CPU_CLONES_WIDE void for_each_plane(int64_t begin, int64_t end, const F& f) {
  for (int64_t p = begin; p < end; ++p) f(p);
}

// for_each_plane for the depthwise conv: AVX2 at most (see NCPFAST_CPU_CLONES_AVX2).
template <typename F>
NCPFAST_CPU_CLONES_AVX2 void for_each_depthwise_plane(int64_t begin, int64_t end, const F& f) {
  for (int64_t p = begin; p < end; ++p) f(p);
}

}  // namespace core
}  // namespace ncpfast
