// Helpers for the native tests: an assertion that reports and counts
// failures, and their random inputs.
#pragma once

#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

static int g_failures = 0;

#define NCPFAST_EXPECT(cond, ...)                                              \
  do {                                                                         \
    if (!(cond)) {                                                             \
      ++g_failures;                                                            \
      std::fprintf(stderr, "%s:%d: expected %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                       \
      std::fprintf(stderr, "\n");                                              \
    }                                                                          \
  } while (0)

// n values from N(0, scale^2), from one fixed-seed generator per test program.
inline std::vector<float> random_values(int64_t n, float scale = 1.f) {
  static std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

inline int finish(const char* name) {
  if (g_failures) {
    std::fprintf(stderr, "%s: %d check(s) failed\n", name, g_failures);
    return 1;
  }
  std::printf("%s: all checks passed\n", name);
  return 0;
}

// The compiler's IEEE half type (_Float16) stands in for c10::Half in the
// emulated CUDA tests; GCC >= 12 and Clang >= 15 on x86-64 have it.
#if defined(__FLT16_MAX__)
#define NCPFAST_HAVE_FLOAT16 1
#else
#define NCPFAST_HAVE_FLOAT16 0
#endif
