// What the CUDA kernel headers (*.cuh) take from the CUDA toolkit. The native
// tests instead include csrc/tests/cuda_emulation.h first, which defines the
// same names for a CPU emulation of the execution model, so the kernels'
// logic is tested on machines without a GPU.
#pragma once

#if !defined(NCPFAST_CUDA_EMULATION)
#include <cuda_runtime.h>

// A kernel's dynamic shared memory (the launch's shared-memory bytes), 16-byte aligned.
#define NCPFAST_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
// A kernel's static shared array: NCPFAST_STATIC_SHARED(float, tile, [256]). The
// emulation registers it, to poison it between blocks and count it against the
// block's shared-memory limit.
#define NCPFAST_STATIC_SHARED(type, name, extents) __shared__ type name extents
// kernel<<<grid, block, shared_bytes, stream>>>(args...)
#define NCPFAST_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__)
#endif

#include <cstddef>

namespace ncpfast {
namespace core {
// Shared memory a block may use without opting in to more (cudaFuncSetAttribute).
constexpr size_t kDefaultSharedBytesPerBlock = 48 * 1024;
}  // namespace core
}  // namespace ncpfast
