// Which compiled copy of ncpfast's CPU loops runs (common.h's for_each_plane):
// the widest target this CPU supports, or one pinned below it, so that every
// copy can be tested against the twins on one machine (NCPFAST_CPU_TARGET,
// ncpfast.set_cpu_target). Torch-free, like the rest of csrc/core.
#pragma once

#include <atomic>
#include <cstring>

namespace ncpfast {
namespace core {

// Ordered: a target runs on every CPU that runs a larger one.
enum class CpuTarget : int { kBaseline = 0, kX86_64_V3 = 3, kX86_64_V4 = 4 };

inline const char* cpu_target_name(CpuTarget t) {
  switch (t) {
    case CpuTarget::kX86_64_V4:
      return "x86-64-v4";
    case CpuTarget::kX86_64_V3:
      return "x86-64-v3";
    default:
      return "baseline";
  }
}

// False for a name that is no target.
inline bool parse_cpu_target(const char* name, CpuTarget* out) {
  for (CpuTarget t : {CpuTarget::kBaseline, CpuTarget::kX86_64_V3, CpuTarget::kX86_64_V4}) {
    if (std::strcmp(name, cpu_target_name(t)) == 0) {
      *out = t;
      return true;
    }
  }
  return false;
}

// The widest target this CPU (and its OS: AVX state saved) runs, among those compiled.
inline CpuTarget detected_cpu_target() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(NCPFAST_NO_MULTIVERSION)
  static const CpuTarget detected = [] {
    __builtin_cpu_init();
    const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
                    __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("movbe");
    const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                    __builtin_cpu_supports("avx512vl");
    return v4 ? CpuTarget::kX86_64_V4 : v3 ? CpuTarget::kX86_64_V3 : CpuTarget::kBaseline;
  }();
  return detected;
#else
  return CpuTarget::kBaseline;
#endif
}

namespace detail {
inline std::atomic<int>& pinned_cpu_target() {
  static std::atomic<int> pinned{-1};  // -1: none
  return pinned;
}
}  // namespace detail

// The target whose copy runs: the pinned one, else the detected one.
inline CpuTarget active_cpu_target() {
  const int pinned = detail::pinned_cpu_target().load(std::memory_order_relaxed);
  return pinned < 0 ? detected_cpu_target() : static_cast<CpuTarget>(pinned);
}

// Pins t (false, and nothing changes, when this CPU cannot run it).
inline bool pin_cpu_target(CpuTarget t) {
  if (static_cast<int>(t) > static_cast<int>(detected_cpu_target())) return false;
  detail::pinned_cpu_target().store(static_cast<int>(t), std::memory_order_relaxed);
  return true;
}

inline void unpin_cpu_target() { detail::pinned_cpu_target().store(-1, std::memory_order_relaxed); }

}  // namespace core
}  // namespace ncpfast
