// Philox4x32-10 counter-based random number generator (Salmon et al. 2011, "Parallel random
// numbers: as easy as 1, 2, 3"), written for galguard. Identical on host and device.
// Known-answer vectors (Random123 kat_vectors) are checked in tests/test_kernels_rng.py.
#pragma once

#include "common.h"

#if !defined(__CUDA_ARCH__)
#include <cstring>
#endif

namespace galguard {

struct U32x4 {
  uint32_t v[4];
};

GG_HOST_DEVICE GG_FORCEINLINE uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

// One Philox4x32-10 block: 4 counter words, 2 key words -> 4 random words.
GG_HOST_DEVICE GG_FORCEINLINE U32x4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2,
                                                  uint32_t c3, uint32_t k0, uint32_t k1) {
  const uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  const uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kM0, c0, &hi0);
    const uint32_t lo1 = mulhilo32(kM1, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  U32x4 out;
  out.v[0] = c0;
  out.v[1] = c1;
  out.v[2] = c2;
  out.v[3] = c3;
  return out;
}

// A key from a 64-bit seed.
struct Key {
  uint32_t k0, k1;
};
GG_HOST_DEVICE GG_FORCEINLINE Key make_key(uint64_t seed) {
  Key key;
  key.k0 = static_cast<uint32_t>(seed);
  key.k1 = static_cast<uint32_t>(seed >> 32);
  return key;
}

// Double in the open interval (0, 1) from the top 52 of the 64 bits (hi, lo):
// (x + 0.5) * 2^-52 with x < 2^52, exact.
// The integer-to-double conversion goes through the exponent bits (exact for x < 2^52) so that
// the CPU loop over elements vectorises without 64-bit integer conversion instructions.
GG_HOST_DEVICE GG_FORCEINLINE double u52_to_double(uint64_t x) {
  const uint64_t bits = 0x4330000000000000ull | x;  // 2^52 + x
#if defined(__CUDA_ARCH__)
  const double d = __longlong_as_double(static_cast<long long>(bits));
#else
  double d;
  std::memcpy(&d, &bits, sizeof d);
#endif
  return d - 4503599627370496.0;
}
GG_HOST_DEVICE GG_FORCEINLINE double u01_open(uint32_t hi, uint32_t lo) {
  const uint64_t x = (static_cast<uint64_t>(hi) << 20) | static_cast<uint64_t>(lo >> 12);
  return (u52_to_double(x) + 0.5) * 2.220446049250313080847263336181640625e-16;
}

// Float in [0, 1) with 24 random bits: (w >> 8) * 2^-24, exact.
GG_HOST_DEVICE GG_FORCEINLINE float u01_float(uint32_t w) {
  return static_cast<float>(w >> 8) * 5.9604644775390625e-08f;
}

// Integer in [0, n) by multiply-shift (bias below n / 2^32).
GG_HOST_DEVICE GG_FORCEINLINE uint32_t uniform_int(uint32_t w, uint32_t n) {
  return static_cast<uint32_t>((static_cast<uint64_t>(w) * static_cast<uint64_t>(n)) >> 32);
}

}  // namespace galguard
