// Philox4x32-10 counter-based random numbers (Salmon et al., SC'11).
//
// Counter-based means a random number is a pure function of (key, counter):
// each (row, sample) of a kernel can compute its own uniform without shared
// state, in any order, on the CPU or the GPU, and get the same value.
#pragma once

#include "common.h"

namespace ncpfast {
namespace core {

struct Philox4 {
  uint32_t v[4];
};

NCPFAST_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

NCPFAST_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kMul0, ctr.v[0], &hi0);
    const uint32_t lo1 = mulhilo32(kMul1, ctr.v[2], &hi1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
  }
  return ctr;
}

// The documented SIR random stream: the uniform for sample `sample` of row
// `row` under `seed` comes from Philox counter (sample, row) and key seed: the
// first two output words, (word0 << 21) | (word1 >> 11), are 53 random bits,
// mapped to [0, 1) in double. Fewer bits would quantise every target to
// total * 2^-bits (with 24 bits that moves an index's probability by about
// 0.6% at M = 1e5 and 6% at M = 1e6).
NCPFAST_HD double sir_uniform(uint64_t seed, uint64_t row, uint64_t sample) {
  const Philox4 ctr{{static_cast<uint32_t>(sample), static_cast<uint32_t>(sample >> 32), static_cast<uint32_t>(row),
                     static_cast<uint32_t>(row >> 32)}};
  const Philox4 out = philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint64_t bits = (static_cast<uint64_t>(out.v[0]) << 21) | (out.v[1] >> 11);
  return static_cast<double>(bits) * (1.0 / 9007199254740992.0);  // 2^-53
}

}  // namespace core
}  // namespace ncpfast
