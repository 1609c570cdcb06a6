// Torch-free helpers shared by the CPU and CUDA kernel cores.
//
// Everything under csrc/core/ compiles without PyTorch: the extension
// instantiates these templates on tensor data pointers, and the native tests in
// csrc/tests/ (built by CMake, run under ASan/UBSan) instantiate them directly.
#pragma once

#include <cstdint>

#if !defined(__CUDACC__)
#include "cpu_target.h"
#endif

#if defined(__CUDACC__)
#define NCPFAST_HD __host__ __device__ __forceinline__
#else
#define NCPFAST_HD inline __attribute__((always_inline))
#endif

// CPU loops that must vectorise with the machine's widest vectors but still
// run on any x86-64 are compiled once per target below, and each call runs the
// copy for the active target (cpu_target.h: the widest this CPU runs, unless
// pinned, e.g. to test every copy on one machine). Everything the loop body
// calls must be force-inlined (NCPFAST_HD / NCPFAST_ALWAYS_INLINE) to be
// compiled for the chosen target too. Two sets of targets:
//   for_each_plane            x86-64-v4 (AVX-512), x86-64-v3 (AVX2/FMA), baseline:
//                             elementwise loops and reductions, which AVX-512 speeds up;
//   for_each_depthwise_plane  x86-64-v3 and baseline (also when v4 is active): the
//                             depthwise conv, whose register blocks are one AVX2
//                             vector (8 floats) wide and ran slower as AVX-512
//                             code (docs/design-notes.md).
#if !defined(__CUDACC__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(NCPFAST_NO_MULTIVERSION)
#define NCPFAST_MULTIVERSION 1
#define NCPFAST_TARGET_X86_64_V4 __attribute__((target("arch=x86-64-v4")))
#define NCPFAST_TARGET_X86_64_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define NCPFAST_MULTIVERSION 0
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

#if !defined(__CUDACC__)
// Runs f(p) for p in [begin, end), compiled for the active CPU target; pass a
// lambda marked NCPFAST_ALWAYS_INLINE so its body is compiled for each target.
template <typename F>
void plane_loop_baseline(int64_t begin, int64_t end, const F& f) {
  for (int64_t p = begin; p < end; ++p) f(p);
}
#if NCPFAST_MULTIVERSION
template <typename F>
NCPFAST_TARGET_X86_64_V4 void plane_loop_x86_64_v4(int64_t begin, int64_t end, const F& f) {
  for (int64_t p = begin; p < end; ++p) f(p);
}
template <typename F>
NCPFAST_TARGET_X86_64_V3 void plane_loop_x86_64_v3(int64_t begin, int64_t end, const F& f) {
  for (int64_t p = begin; p < end; ++p) f(p);
}
#endif

template <typename F>
void for_each_plane(int64_t begin, int64_t end, const F& f) {
#if NCPFAST_MULTIVERSION
  switch (active_cpu_target()) {
    case CpuTarget::kX86_64_V4:
      return plane_loop_x86_64_v4(begin, end, f);
    case CpuTarget::kX86_64_V3:
      return plane_loop_x86_64_v3(begin, end, f);
    default:
      break;
  }
#endif
  plane_loop_baseline(begin, end, f);
}

// for_each_plane for the depthwise conv: AVX2 at most.
template <typename F>
void for_each_depthwise_plane(int64_t begin, int64_t end, const F& f) {
#if NCPFAST_MULTIVERSION
  if (active_cpu_target() != CpuTarget::kBaseline) return plane_loop_x86_64_v3(begin, end, f);
#endif
  plane_loop_baseline(begin, end, f);
}
#endif  // !__CUDACC__

}  // namespace core
}  // namespace ncpfast
