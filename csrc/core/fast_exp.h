// exp(x) for x <= 0 written so that compilers vectorise loops over it
// (no libm call, no branches): the SIR CPU path spends most of its time here.
#pragma once

#include <cstdint>
#include <cstring>

namespace ncpfast {
namespace core {

// Relative error below 3e-7 on [-87, 0] (Cephes' expf polynomial after
// reduction by ln 2); exactly 0 below -87.3, so exp(-inf) == 0 as the
// resampler requires. x must not be NaN or > 0 (the caller subtracts the max).
inline float exp_nonpositive(float x) {
  const float kMin = -87.3f;
  const float clamped = x < kMin ? kMin : x;  // selects, not branches: keeps the loop vectorisable
  const float kLog2e = 1.44269504088896341f;
  const float kRound = 12582912.f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float n = (clamped * kLog2e + kRound) - kRound;
  const float r = (clamped - n * 0.693359375f) - n * -2.12194440e-4f;  // x - n ln2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 0]
  bits = x < kMin ? 0 : bits;                            // below the range: exactly 0
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}

}  // namespace core
}  // namespace ncpfast
