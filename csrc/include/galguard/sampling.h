// Exact Poisson and binomial samplers driven by Philox4x32-10, shared by the CPU and CUDA twins
// and mirrored line by line in galguard/_reference.py.
//
// Every draw for one element uses the Philox counter
//   (row, realisation, element, stream << 24 | iteration)
// so it depends only on (seed, row id, realisation, element): not on the batch, thread or device.
// Each Philox block gives two uniforms in (0, 1) (52 bits each); rejection loops and restarts
// take the next block by incrementing `iteration`.
//
// Poisson(lambda):  lambda == 0 -> 0;  lambda < 10 -> inversion by sequential search (one
//   uniform; restart with the next block in the rare case the search runs past 10 lambda + 64);
//   lambda >= 10 -> PTRS, transformed rejection with squeeze (Hoermann 1993, "The transformed
//   rejection method for generating Poisson random variables"), exact for any lambda.
// Binomial(n, p):  p >= 1 -> n;  n == 0 -> 0; with q = min(p, 1 - p) and m = n q:
//   m < 10 -> inversion (sequential search); m >= 10 -> BTRS (Hoermann 1993, "The generation of
//   binomial random variates"); p > 1/2 uses n - Binomial(n, 1 - p).
// log(k!) is computed by the Stirling series with the exact tail for k < 10, in double; log and
// exp are our own (fmath.h) so that every backend gives the same bits.
#pragma once

#include <math.h>

#include "common.h"
#include "fmath.h"
#include "philox.h"

namespace galguard {

// log(k!) - [(k + 1/2) log(k + 1) - (k + 1) + log(2 pi) / 2]: the series (to the (k+1)^-9
// term) for k >= 10, and an exact table below (stirling_tail).
GG_HOST_DEVICE GG_FORCEINLINE double stirling_series(double k) {
  const double n = k + 1.0;
  const double n2 = 1.0 / (n * n);
  // 1/12n - 1/360n^3 + 1/1260n^5 - 1/1680n^7 + 1/1188n^9
  return (1.0 / 12.0 -
          n2 * (1.0 / 360.0 - n2 * (1.0 / 1260.0 - n2 * (1.0 / 1680.0 - n2 * (1.0 / 1188.0))))) /
         n;
}

GG_HOST_DEVICE inline double stirling_tail(double k) {
  if (k < 10.0) {
    const int i = static_cast<int>(k);
    switch (i) {
      case 0: return 0.08106146679532726;
      case 1: return 0.0413406959554093;
      case 2: return 0.02767792568499834;
      case 3: return 0.020790672103765093;
      case 4: return 0.016644691189821193;
      case 5: return 0.013876128823070748;
      case 6: return 0.01189670994589177;
      case 7: return 0.010411265261972096;
      case 8: return 0.009255462182712733;
      default: return 0.00833056343336287;
    }
  }
  return stirling_series(k);
}

// ---------------------------------------------------------------------------------------------
// Poisson
// ---------------------------------------------------------------------------------------------
// Constants of PTRS for one lambda (Hoermann 1993, table 2).
struct PtrsConstants {
  double a, b, inv_alpha, v_r;
};
GG_HOST_DEVICE GG_FORCEINLINE PtrsConstants ptrs_constants(double lam) {
  PtrsConstants c;
  const double slam = sqrt(lam);
  c.b = 0.931 + 2.53 * slam;
  c.a = -0.059 + 0.02483 * c.b;
  c.inv_alpha = 1.1239 + 1.1328 / (c.b - 3.4);
  c.v_r = 0.9277 - 3.6224 / (c.b - 2.0);
  return c;
}

// One PTRS proposal from a Philox block: k, and the (u, v, us) needed by the tests.
GG_HOST_DEVICE GG_FORCEINLINE double ptrs_proposal(const PtrsConstants& c, double lam, U32x4 r,
                                                   double* us_out, double* v_out) {
  const double u = u01_open(r.v[0], r.v[1]) - 0.5;
  const double v = u01_open(r.v[2], r.v[3]);
  const double us = 0.5 - fabs(u);
  *us_out = us;
  *v_out = v;
  return floor((2.0 * c.a / us + c.b) * u + lam + 0.43);
}

// log f(k) = k log(lam) - lam - log(k!), written to avoid cancellation:
//   k log(lam / (k + 1)) - log(k + 1) / 2 + (k + 1 - lam) - log(2 pi) / 2 - tail(k)
GG_HOST_DEVICE GG_FORCEINLINE double ptrs_log_f(double lam, double k, double tail) {
  const double kp1 = k + 1.0;
  return k * gg_log1p((lam - kp1) / kp1) - 0.5 * gg_log(kp1) + (kp1 - lam) -
         0.91893853320467274 - tail;
}

// Log of the scaled hat at the proposal, compared with ptrs_log_f in the exact test.
GG_HOST_DEVICE GG_FORCEINLINE double ptrs_log_hat(const PtrsConstants& c, double us, double v) {
  return gg_log(v * c.inv_alpha / (c.a / (us * us) + c.b));
}

// The Poisson draw, given the element's first Philox block (iteration 0), which the CPU twin
// computes for many elements at once; later blocks are computed here.
GG_HOST_DEVICE inline double poisson_draw_from(double lam, Key key, uint32_t row, uint32_t real,
                                               uint32_t elem, U32x4 first) {
  if (!(lam > 0.0)) return 0.0;
  uint32_t it = 0;
  if (lam < 10.0) {
    const double p0 = gg_exp(-lam);
    const double cap = 10.0 * lam + 64.0;
    for (;;) {
      const U32x4 r = it == 0 ? first
                              : philox4x32_10(row, real, elem, stream_word(kStreamPoisson, it),
                                              key.k0, key.k1);
      ++it;
      double u = u01_open(r.v[0], r.v[1]);
      double p = p0;
      double k = 0.0;
      // sequential search; the CPU twin runs the same steps for many elements at once
      while (u > p && k <= cap) {
        u -= p;
        k += 1.0;
        p *= lam / k;
      }
      if (k <= cap) return k;
    }
  }
  // PTRS
  const PtrsConstants c = ptrs_constants(lam);
  for (;;) {
    const U32x4 r = it == 0 ? first
                            : philox4x32_10(row, real, elem, stream_word(kStreamPoisson, it),
                                            key.k0, key.k1);
    ++it;
    double us, v;
    const double k = ptrs_proposal(c, lam, r, &us, &v);
    if (us >= 0.07 && v <= c.v_r) return k;
    if (k < 0.0 || (us < 0.013 && v > us)) continue;
    if (ptrs_log_hat(c, us, v) <= ptrs_log_f(lam, k, stirling_tail(k))) return k;
  }
}

GG_HOST_DEVICE inline double poisson_draw(double lam, Key key, uint32_t row, uint32_t real,
                                          uint32_t elem) {
  if (!(lam > 0.0)) return 0.0;
  return poisson_draw_from(
      lam, key, row, real, elem,
      philox4x32_10(row, real, elem, stream_word(kStreamPoisson, 0u), key.k0, key.k1));
}

// ---------------------------------------------------------------------------------------------
// Binomial
// ---------------------------------------------------------------------------------------------
// Constants of BTRS for Binomial(n, q), q <= 1/2, n q >= 10 (Hoermann 1993).
struct BtrsConstants {
  double a, b, c, v_r, alpha, lpq, mode;
};
GG_HOST_DEVICE GG_FORCEINLINE BtrsConstants btrs_constants(double n, double q) {
  BtrsConstants t;
  const double m = n * q;
  const double spq = sqrt(m * (1.0 - q));
  t.b = 1.15 + 2.53 * spq;
  t.a = -0.0873 + 0.0248 * t.b + 0.01 * q;
  t.c = m + 0.5;
  t.v_r = 0.92 - 4.2 / t.b;
  t.alpha = (2.83 + 5.1 / t.b) * spq;
  t.lpq = gg_log(q / (1.0 - q));
  t.mode = floor((n + 1.0) * q);
  return t;
}

GG_HOST_DEVICE GG_FORCEINLINE double btrs_proposal(const BtrsConstants& t, U32x4 r,
                                                   double* us_out, double* v_out) {
  const double u = u01_open(r.v[0], r.v[1]) - 0.5;
  const double v = u01_open(r.v[2], r.v[3]);
  const double us = 0.5 - fabs(u);
  *us_out = us;
  *v_out = v;
  return floor((2.0 * t.a / us + t.b) * u + t.c);
}

// The exact test: log of the scaled hat <= log[f(k) / f(mode)], with
//   log[f(k) / f(mode)] = log[mode! (n - mode)! / (k! (n - k)!)] + (k - mode) log(q / (1 - q))
// by Stirling's formula, given the tails of mode, n - mode, k and n - k.
GG_HOST_DEVICE GG_FORCEINLINE bool btrs_exact(const BtrsConstants& t, double n, double k,
                                              double us, double v, double tail_mode,
                                              double tail_n_mode, double tail_k,
                                              double tail_n_k) {
  const double lhs = gg_log(v * t.alpha / (t.a / (us * us) + t.b));
  const double mode = t.mode;
  const double bound = (mode + 0.5) * gg_log((mode + 1.0) / (n - mode + 1.0)) -
                       (k + 0.5) * gg_log((k + 1.0) / (n - k + 1.0)) +
                       (n + 1.0) * gg_log((n - mode + 1.0) / (n - k + 1.0)) +
                       (k - mode) * t.lpq + tail_mode + tail_n_mode - tail_k - tail_n_k;
  return lhs <= bound;
}

// Inversion constants for Binomial(n, q), n q < 10: P(0), the ratio q / (1 - q), the cap.
GG_HOST_DEVICE GG_FORCEINLINE double binomial_p0(double n, double q) {
  return gg_exp(n * gg_log1p(-q));
}
GG_HOST_DEVICE GG_FORCEINLINE double binomial_cap(double n, double m) {
  const double c = 10.0 * m + 64.0;
  return n < c ? n : c;
}

GG_HOST_DEVICE inline double binomial_draw(double n, double p, Key key, uint32_t row,
                                           uint32_t real, uint32_t elem) {
  if (!(n > 0.0)) return 0.0;
  if (p >= 1.0) return n;
  if (!(p > 0.0)) return 0.0;
  const bool flip = p > 0.5;
  const double q = flip ? 1.0 - p : p;
  const double m = n * q;
  uint32_t it = 0;
  double k;
  if (m < 10.0) {
    // inversion: P(0) = (1 - q)^n, P(k) = P(k - 1) * (n - k + 1) / k * q / (1 - q)
    const double p0 = binomial_p0(n, q);
    const double s = q / (1.0 - q);
    const double cap = binomial_cap(n, m);
    for (;;) {
      const U32x4 r = philox4x32_10(row, real, elem, stream_word(kStreamBinomial, it), key.k0,
                                    key.k1);
      ++it;
      double u = u01_open(r.v[0], r.v[1]);
      double pk = p0;
      k = 0.0;
      bool ok = true;
      while (u > pk) {
        u -= pk;
        k += 1.0;
        if (k > cap) {
          ok = false;
          break;
        }
        pk *= s * (n - k + 1.0) / k;
      }
      if (ok) break;
    }
  } else {
    // BTRS
    const BtrsConstants t = btrs_constants(n, q);
    for (;;) {
      const U32x4 r = philox4x32_10(row, real, elem, stream_word(kStreamBinomial, it), key.k0,
                                    key.k1);
      ++it;
      double us, v;
      k = btrs_proposal(t, r, &us, &v);
      if (k < 0.0 || k > n) continue;
      if (us >= 0.07 && v <= t.v_r) break;
      if (btrs_exact(t, n, k, us, v, stirling_tail(t.mode), stirling_tail(n - t.mode),
                     stirling_tail(k), stirling_tail(n - k))) {
        break;
      }
    }
  }
  return flip ? n - k : k;
}

}  // namespace galguard
