// The SIR CUDA kernel's test (test_sir_cuda.cu), run on the CPU emulation of
// the CUDA execution model (cuda_emulation.h) instead of a device.
#include "cuda_emulation.h"
#include "test_sir_cuda.cu"
