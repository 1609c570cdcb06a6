// A CPU emulation of the CUDA execution model, for testing the logic of the
// project's CUDA kernels on machines without a GPU (CI has none).
//
// Include this before a kernel header (*.cuh); the kernels then compile as
// plain C++ and emu::launch runs them. Every CUDA thread of a block is an OS
// thread; blocks run one after another, so a kernel's static __shared__
// arrays (function statics here) are shared by exactly one block at a time,
// as on the device. __syncthreads is a barrier over the block's threads, and
// the warp shuffles exchange values through a per-warp barrier, so a thread
// reads what another thread wrote only across a barrier, as on the device.
// Built under ThreadSanitizer, an access to shared or global memory that no
// barrier orders is reported as a data race: the analogue of
// compute-sanitizer's racecheck. Built under AddressSanitizer, an out-of-range
// access is reported: the analogue of memcheck (for host-allocated buffers).
//
// Static shared arrays (NCPFAST_STATIC_SHARED) register themselves with the
// launch the first time a thread of it passes their declaration: they are
// poisoned then and after every block, as the dynamic shared memory is, and
// their bytes count with the dynamic ones against the block's shared-memory
// limit. A launch whose grid or block exceeds the device's limits (grid y and z
// 65535, x 2^31 - 1; 1024 threads per block, block z 64) aborts as a device
// refuses it.
//
// What it does not emulate: the device's floating point (__expf is exp here),
// the memory model beyond barriers (no warp-synchronous code without
// __syncwarp / shuffles is tolerated, by design), timing and occupancy. A
// divergent __syncthreads (some threads of a block at a barrier, others at a
// different barrier or finished) and a barrier that is never completed abort
// with a message instead of hanging, and so does a launch with more than the
// default 48 KiB of dynamic shared memory that the kernel was not opted in to
// (cudaFuncSetAttribute), which a device refuses.
#pragma once

#define NCPFAST_CUDA_EMULATION 1

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <thread>
#include <tuple>
#include <vector>

// ---------------------------------------------------------------- the dialect

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
#define __align__(n) alignas(n)
// A kernel's static shared memory: one copy, used by one block at a time.
#define __shared__ static
#define NCPFAST_STATIC_SHARED(type, name, extents) \
  static type name extents;                        \
  ::ncpfast::emu::register_static_shared(&name, sizeof(name))
// A kernel's dynamic shared memory (the launch's shared_bytes).
#define NCPFAST_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::ncpfast::emu::dynamic_shared())

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
using cudaStream_t = void*;

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

using std::isnan;
using std::max;
using std::min;

inline float __int_as_float(int bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}
inline float __expf(float x) { return std::exp(x); }

// ---------------------------------------------------------------- the runtime

namespace ncpfast {
namespace emu {

// A reusable barrier for `count` threads. Every arrival names what it is
// (a __syncthreads, a shuffle, the end of a block); arrivals of different
// kinds at one barrier mean the kernel diverged around a barrier, which is
// undefined behaviour on the device: report it and abort.
class Barrier {
 public:
  explicit Barrier(unsigned count) : count_(count) {}

  void arrive_and_wait(const char* kind) {
    const unsigned long generation = generation_.load(std::memory_order_acquire);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (waiting_ == 0) {
        kind_ = kind;
      } else if (std::strcmp(kind_, kind) != 0) {
        std::fprintf(stderr, "cuda emulation: block (%u, %u) thread %u reached %s while other threads wait at %s\n",
                     blockIdx.x, blockIdx.y, threadIdx.x, kind, kind_);
        std::abort();
      }
      if (++waiting_ == count_) {
        waiting_ = 0;
        generation_.store(generation + 1, std::memory_order_release);
        return;
      }
    }
    // Yield rather than sleep: with a block's threads on a few cores, every
    // waiter is woken within one round of the scheduler.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
    for (unsigned spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      std::this_thread::yield();
      if (spins % 4096 == 0 && std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr, "cuda emulation: block (%u, %u): threads waited 300 s at %s\n", blockIdx.x, blockIdx.y,
                     kind);
        std::abort();
      }
    }
  }

 private:
  std::mutex mutex_;
  std::atomic<unsigned long> generation_{0};
  const unsigned count_;
  unsigned waiting_ = 0;
  const char* kind_ = "";
};

constexpr unsigned kWarpSize = 32;
constexpr unsigned char kPoison = 0xff;  // unwritten shared memory reads as NaN (floats) or -1

struct Launch {
  unsigned threads;
  Barrier block;
  std::vector<Barrier*> warps;
  std::vector<std::array<unsigned char, 16>> lanes;  // one shuffle slot per thread
  // Exactly the launch's bytes (16-byte aligned, as on the device), so that
  // AddressSanitizer reports any access past them.
  size_t shared_bytes;
  unsigned char* dynamic_shared;

  Launch(unsigned threads_, size_t shared_bytes_)
      : threads(threads_), block(threads_), lanes(threads_), shared_bytes(shared_bytes_),
        dynamic_shared(
            static_cast<unsigned char*>(::operator new(shared_bytes_ + (shared_bytes_ == 0), std::align_val_t(16)))) {
    poison_shared();
    for (unsigned first = 0; first < threads; first += kWarpSize)
      warps.push_back(new Barrier(std::min(kWarpSize, threads - first)));
  }
  ~Launch() {
    for (Barrier* warp : warps) delete warp;
    ::operator delete(dynamic_shared, std::align_val_t(16));
  }
  void poison_shared() {
    std::memset(dynamic_shared, kPoison, shared_bytes);
    for (const auto& [address, bytes] : static_shared) std::memset(address, kPoison, bytes);
  }

  // The kernel's static shared arrays met so far, and the shared memory a block may use.
  std::mutex static_mutex;
  std::map<void*, size_t> static_shared;
  size_t static_bytes = 0, shared_limit = 0;
};

inline Launch* current = nullptr;

// Dynamic shared memory a launch may use without opting in, and the kernels
// opted in to more (cudaFuncSetAttribute's MaxDynamicSharedMemorySize).
constexpr size_t kDefaultDynamicShared = 48 * 1024;
inline std::map<const void*, size_t>& shared_opt_ins() {
  static std::map<const void*, size_t> opt_ins;
  return opt_ins;
}

// Called where a static shared array is declared (NCPFAST_STATIC_SHARED): the
// first time in a launch the array is poisoned (it keeps the previous launch's
// data otherwise) and its bytes are counted against the block's limit.
inline void register_static_shared(void* address, size_t bytes) {
  Launch& launch = *current;
  std::lock_guard<std::mutex> lock(launch.static_mutex);
  if (!launch.static_shared.emplace(address, bytes).second) return;
  std::memset(address, kPoison, bytes);
  launch.static_bytes += bytes;
  if (launch.static_bytes + launch.shared_bytes > launch.shared_limit) {
    std::fprintf(stderr,
                 "cuda emulation: a block uses %zu bytes of static and %zu of dynamic shared memory, more than "
                 "the %zu the kernel may use\n",
                 launch.static_bytes, launch.shared_bytes, launch.shared_limit);
    std::abort();
  }
}

// Aborts, as a device refuses the launch, when the grid or block is out of the device's limits.
inline void check_launch_geometry(dim3 grid, dim3 block) {
  const bool grid_ok =
      grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffu && grid.y <= 65535 && grid.z <= 65535;
  const bool block_ok = block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= 1024 && block.y <= 1024 &&
                        block.z <= 64 && static_cast<unsigned long long>(block.x) * block.y * block.z <= 1024;
  if (!grid_ok || !block_ok) {
    std::fprintf(stderr,
                 "cuda emulation: a launch of grid (%u, %u, %u) and block (%u, %u, %u) is out of the device's "
                 "limits (grid x < 2^31, y, z <= 65535; at most 1024 threads a block, z <= 64)\n",
                 grid.x, grid.y, grid.z, block.x, block.y, block.z);
    std::abort();
  }
}

inline unsigned linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

inline void* dynamic_shared() { return current->dynamic_shared; }

template <typename T>
T shuffle(unsigned mask, T value, int source_lane) {
  static_assert(sizeof(T) <= 16, "shuffled values are at most 16 bytes");
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "cuda emulation: only full-warp shuffles are emulated (mask %#x)\n", mask);
    std::abort();
  }
  const unsigned thread = linear_thread(), warp = thread / kWarpSize;
  const unsigned first = warp * kWarpSize, width = std::min(kWarpSize, current->threads - first);
  std::memcpy(current->lanes[thread].data(), &value, sizeof(T));
  current->warps[warp]->arrive_and_wait("a warp shuffle");
  T result = value;
  if (source_lane >= 0 && static_cast<unsigned>(source_lane) < width)
    std::memcpy(&result, current->lanes[first + source_lane].data(), sizeof(T));
  current->warps[warp]->arrive_and_wait("a warp shuffle");  // slots are rewritten by the next shuffle
  return result;
}

// Runs kernel<<<grid, block, shared_bytes>>>(args...) and returns when it has finished.
template <typename... Params, typename... Args>
void launch(dim3 grid, dim3 block, size_t shared_bytes, void (*kernel)(Params...), Args&&... args) {
  const std::tuple<Params...> params(std::forward<Args>(args)...);
  check_launch_geometry(grid, block);
  const auto opt_in = shared_opt_ins().find(reinterpret_cast<const void*>(kernel));
  const size_t shared_limit = opt_in == shared_opt_ins().end() ? kDefaultDynamicShared : opt_in->second;
  if (shared_bytes > kDefaultDynamicShared) {
    if (opt_in == shared_opt_ins().end() || opt_in->second < shared_bytes) {
      std::fprintf(stderr,
                   "cuda emulation: a launch with %zu bytes of dynamic shared memory needs "
                   "cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, >= %zu) first "
                   "(without it a device allows %zu)\n",
                   shared_bytes, shared_bytes, kDefaultDynamicShared);
      std::abort();
    }
  }
  const unsigned threads = block.x * block.y * block.z;
  Launch state(threads, shared_bytes);
  state.shared_limit = std::max(shared_limit, kDefaultDynamicShared);
  current = &state;
  gridDim = grid;
  blockDim = block;
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      threadIdx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
      for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
          for (unsigned x = 0; x < grid.x; ++x) {
            blockIdx = dim3(x, y, z);
            std::apply(kernel, params);
            state.block.arrive_and_wait("the end of the block");
            if (t == 0) state.poison_shared();  // a block never sees its predecessor's data
            state.block.arrive_and_wait("the end of the block");
          }
    });
  }
  for (std::thread& worker : workers) worker.join();
  current = nullptr;
}

}  // namespace emu
}  // namespace ncpfast

inline void __syncthreads() { ::ncpfast::emu::current->block.arrive_and_wait("__syncthreads"); }

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta) {
  const int lane = static_cast<int>(::ncpfast::emu::linear_thread() % ::ncpfast::emu::kWarpSize);
  const int source = lane + static_cast<int>(delta);
  return ::ncpfast::emu::shuffle(mask, value, source < 32 ? source : lane);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta) {
  const int lane = static_cast<int>(::ncpfast::emu::linear_thread() % ::ncpfast::emu::kWarpSize);
  const int source = lane - static_cast<int>(delta);
  return ::ncpfast::emu::shuffle(mask, value, source >= 0 ? source : lane);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  const int lane = static_cast<int>(::ncpfast::emu::linear_thread() % ::ncpfast::emu::kWarpSize);
  return ::ncpfast::emu::shuffle(mask, value, lane ^ lane_mask);
}

#define NCPFAST_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  ((void)(stream), ::ncpfast::emu::launch(dim3(grid), dim3(block), (shared_bytes), kernel, __VA_ARGS__))
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
template <typename... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute, int value) {
  if (value < 0) return cudaErrorInvalidValue;
  ::ncpfast::emu::shared_opt_ins()[reinterpret_cast<const void*>(kernel)] = static_cast<size_t>(value);
  return cudaSuccess;
}

// The runtime API the native CUDA tests use: "device" memory is host memory,
// filled with kPoison at allocation as device memory is not initialised.
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
template <typename T>
cudaError_t cudaMalloc(T** pointer, size_t bytes) {
  void* memory = std::malloc(bytes);
  if (memory == nullptr) return 2;
  std::memset(memory, ::ncpfast::emu::kPoison, bytes);
  *pointer = static_cast<T*>(memory);
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* pointer) {
  std::free(pointer);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  std::memset(dst, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t) { return "cuda emulation error"; }
