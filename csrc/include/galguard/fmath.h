// Elementary functions of our own (log, log1p, exp in double), written with +, -, *, /, sqrt,
// floor and exponent-bit manipulation only. With contraction into FMA disabled these give the
// same bits on the CPU (scalar or vectorised), on CUDA and in galguard/_reference.py, which a
// libm call cannot promise; they are accurate to about 1 ulp over the ranges the samplers use.
#pragma once

#include <math.h>

#include "common.h"
#include "philox.h"

namespace galguard {

GG_HOST_DEVICE GG_FORCEINLINE uint64_t double_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

GG_HOST_DEVICE GG_FORCEINLINE double bits_double(uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(b));
#else
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// Natural logarithm of a positive normal finite x. x = 2^e m with m in [sqrt(1/2), sqrt(2));
// log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.1716, Taylor series to s^25.
GG_HOST_DEVICE GG_FORCEINLINE double gg_log(double x) {
  const uint64_t b = double_bits(x);
  // exponent as a double, exactly: 2^52 + biased exponent, minus 2^52 + 1023
  double e = bits_double(0x4330000000000000ull | (b >> 52)) - 4503599627371519.0;
  double m = bits_double((b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);  // [1, 2)
  const bool big = m > 1.4142135623730951;
  m = big ? m * 0.5 : m;
  e = big ? e + 1.0 : e;
  const double f = m - 1.0;  // exact (Sterbenz)
  const double s = f / (2.0 + f);
  const double z = s * s;
  // 2 atanh(s) = 2 s + s z (2/3 + z (2/5 + z (2/7 + ...)))
  double p = 2.0 / 25.0;
  p = 2.0 / 23.0 + z * p;
  p = 2.0 / 21.0 + z * p;
  p = 2.0 / 19.0 + z * p;
  p = 2.0 / 17.0 + z * p;
  p = 2.0 / 15.0 + z * p;
  p = 2.0 / 13.0 + z * p;
  p = 2.0 / 11.0 + z * p;
  p = 2.0 / 9.0 + z * p;
  p = 2.0 / 7.0 + z * p;
  p = 2.0 / 5.0 + z * p;
  p = 2.0 / 3.0 + z * p;
  // f - s f = 2 s exactly in real arithmetic; this form keeps the leading term f exact
  const double log_m = f - s * (f - z * p);
  // ln 2 split so that e * kLn2Hi is exact for |e| < 2^11
  const double kLn2Hi = 6.93147180369123816490e-01;
  const double kLn2Lo = 1.90821492927058770002e-10;
  return e * kLn2Hi + (log_m + e * kLn2Lo);
}

// log(1 + d) for d > -1: log(u) d / (u - 1) with u = 1 + d (Goldberg's correction).
GG_HOST_DEVICE GG_FORCEINLINE double gg_log1p(double d) {
  const double u = 1.0 + d;
  const double um1 = u - 1.0;
  return um1 == 0.0 ? d : gg_log(u) * (d / um1);
}

// exp(x) for x in [-700, 700]: x = n ln2 + r, |r| <= ln2 / 2, Taylor series to r^14.
GG_HOST_DEVICE GG_FORCEINLINE double gg_exp(double x) {
  const double n = floor(x * 1.4426950408889634 + 0.5);
  const double kLn2Hi = 6.93147180369123816490e-01;
  const double kLn2Lo = 1.90821492927058770002e-10;
  const double r = (x - n * kLn2Hi) - n * kLn2Lo;
  double p = 1.0 / 87178291200.0;     // 1/14!
  p = 1.0 / 6227020800.0 + r * p;     // 1/13!
  p = 1.0 / 479001600.0 + r * p;      // 1/12!
  p = 1.0 / 39916800.0 + r * p;       // 1/11!
  p = 1.0 / 3628800.0 + r * p;        // 1/10!
  p = 1.0 / 362880.0 + r * p;         // 1/9!
  p = 1.0 / 40320.0 + r * p;          // 1/8!
  p = 1.0 / 5040.0 + r * p;           // 1/7!
  p = 1.0 / 720.0 + r * p;            // 1/6!
  p = 1.0 / 120.0 + r * p;            // 1/5!
  p = 1.0 / 24.0 + r * p;             // 1/4!
  p = 1.0 / 6.0 + r * p;              // 1/3!
  p = 0.5 + r * p;                    // 1/2!
  const double er = 1.0 + (r + r * (r * p));
  // 2^n through the exponent bits (n in [-1010, 1010]): the low bits of 2^52 + n + 1023 hold
  // n + 1023, which the shift moves into the exponent field (no float-to-int conversion)
  const double two_n = bits_double(double_bits(n + 4503599627371519.0) << 52);
  return er * two_n;
}

}  // namespace galguard
