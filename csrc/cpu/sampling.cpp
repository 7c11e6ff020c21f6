// CPU twins of the Poisson and binomial-thinning kernels.
//
// OpenMP splits the elements into chunks. Within a chunk the Poisson kernel runs PTRS for all
// elements at once in a loop the compiler vectorises (function clones for AVX-512, AVX2 and
// baseline x86-64, chosen at run time): pass t draws Philox block t for the elements whose
// proposals were all rejected so far. What is left (means below 10, proposals below 10 that
// need the tail table, elements rejected in every pass) runs through the scalar
// poisson_draw, which redoes the same decisions. The arithmetic is that of sampling.h, element
// by element, so the results are identical to the scalar code, the CUDA twin and the reference.
#include <cstdint>

#include "galguard/kernels.h"
#include "galguard/sampling.h"

// The chunk arrays are filled for [0, count) before use; GCC cannot see it through the clones.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define GG_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GG_CLONES
#endif

namespace galguard {
namespace cpu {

namespace {

constexpr int64_t kParallelMin = 4096;
constexpr int kChunk = 512;
constexpr uint32_t kVectorPasses = 4;
constexpr double kRejected = -1.0;  // proposal rejected: try the next Philox block
constexpr double kScalar = -2.0;    // left to the scalar code (small mean, tail table)

constexpr double kPending = -3.0;   // squeeze failed: the exact test decides (ptrs_test)

// One PTRS proposal for each of `count` elements from Philox block `it`, with the squeeze:
// k where the squeeze accepts, kPending where the exact test must decide (proposal, us, v kept
// for it), kScalar for means below 10. Branch-free so that it vectorises.
GG_CLONES void ptrs_propose(const double* __restrict__ lam, const uint32_t* __restrict__ row,
                            const uint32_t* __restrict__ elem, int count, Key key,
                            uint32_t realisation, uint32_t it, double* __restrict__ k_out,
                            double* __restrict__ prop, double* __restrict__ us_out,
                            double* __restrict__ v_out) {
  const uint32_t c3 = stream_word(kStreamPoisson, it);
  for (int j = 0; j < count; ++j) {
    const double l = lam[j];
    const U32x4 r = philox4x32_10(row[j], realisation, elem[j], c3, key.k0, key.k1);
    const PtrsConstants pc = ptrs_constants(l);
    double us, v;
    const double k = ptrs_proposal(pc, l, r, &us, &v);
    const bool squeeze = (us >= 0.07) & (v <= pc.v_r);
    prop[j] = k;
    us_out[j] = us;
    v_out[j] = v;
    k_out[j] = l >= 10.0 ? (squeeze ? k : kPending) : kScalar;
  }
}

// The rest of poisson_draw_from's decision for proposals the squeeze did not accept:
// k (accepted), kRejected (next block) or kScalar (k < 10 needs the tail table).
GG_CLONES void ptrs_test(const int* __restrict__ pos, int count, const double* __restrict__ lam,
                         const double* __restrict__ prop, const double* __restrict__ us_in,
                         const double* __restrict__ v_in, double* __restrict__ k_out) {
  for (int i = 0; i < count; ++i) {
    const int j = pos[i];
    const double l = lam[j], k = prop[j], us = us_in[j], v = v_in[j];
    const PtrsConstants pc = ptrs_constants(l);
    const bool reject = (k < 0.0) | ((us < 0.013) & (v > us));
    const bool exact = ptrs_log_hat(pc, us, v) <= ptrs_log_f(l, k, stirling_series(k));
    const bool big = k >= 10.0;
    k_out[i] = reject ? kRejected : (big ? (exact ? k : kRejected) : kScalar);
  }
}

// Pass `it` of PTRS over `count` elements: propose, then run the exact test on the compacted
// elements the squeeze left undecided. k_out as in ptrs_test, or k from the squeeze.
struct Scratch {
  int pos[kChunk];
  double prop[kChunk], us[kChunk], v[kChunk], tk[kChunk];
};

void ptrs_pass(const double* lam, const uint32_t* row, const uint32_t* elem, int count, Key key,
               uint32_t realisation, uint32_t it, double* k_out, Scratch& s) {
  ptrs_propose(lam, row, elem, count, key, realisation, it, k_out, s.prop, s.us, s.v);
  int m = 0;
  for (int j = 0; j < count; ++j) {  // branch-free compaction of the undecided indices
    s.pos[m] = j;
    m += k_out[j] == kPending;
  }
  if (m == 0) return;
  ptrs_test(s.pos, m, lam, s.prop, s.us, s.v, s.tk);
  for (int i = 0; i < m; ++i) k_out[s.pos[i]] = s.tk[i];
}

// Inversion for means in (0, 10) from Philox block 0, the steps of poisson_draw_from run for
// all elements in lock step: k, or kScalar where the search passed its cap (a restart).
GG_CLONES void inversion_pass(const double* __restrict__ lam, const uint32_t* __restrict__ row,
                              const uint32_t* __restrict__ elem, int count, Key key,
                              uint32_t realisation, double* __restrict__ k_out) {
  double u[kChunk], p[kChunk], cap[kChunk];
  const uint32_t c3 = stream_word(kStreamPoisson, 0u);
  for (int j = 0; j < count; ++j) {
    const double l = lam[j];
    const U32x4 r = philox4x32_10(row[j], realisation, elem[j], c3, key.k0, key.k1);
    u[j] = u01_open(r.v[0], r.v[1]);
    p[j] = gg_exp(-l);
    cap[j] = 10.0 * l + 64.0;
    k_out[j] = 0.0;
  }
  for (;;) {
    int active = 0;
    for (int j = 0; j < count; ++j) {
      const bool go = (u[j] > p[j]) & (k_out[j] <= cap[j]);
      const double uj = u[j] - p[j];
      const double kj = k_out[j] + 1.0;
      const double pj = p[j] * (lam[j] / kj);
      u[j] = go ? uj : u[j];
      k_out[j] = go ? kj : k_out[j];
      p[j] = go ? pj : p[j];
      active += go;
    }
    if (active == 0) break;
  }
  for (int j = 0; j < count; ++j) k_out[j] = k_out[j] <= cap[j] ? k_out[j] : kScalar;
}

// Philox counters of the `count` elements from flat position `start`: the row id and the
// element within the row of each (rows of `row_size` elements).
void chunk_counters(int64_t start, int count, int64_t row_size, const int64_t* index,
                    uint32_t* row, uint32_t* elem) {
  int64_t r = start / row_size;
  int64_t e = start - r * row_size;
  if (e + count <= row_size) {  // the chunk lies in one row (the common case)
    const uint32_t rid = row_id(index, r);
    const uint32_t e0 = static_cast<uint32_t>(e);
    for (int j = 0; j < count; ++j) {
      row[j] = rid;
      elem[j] = e0 + static_cast<uint32_t>(j);
    }
    return;
  }
  for (int j = 0; j < count; ++j) {
    row[j] = row_id(index, r);
    elem[j] = static_cast<uint32_t>(e);
    if (++e == row_size) {
      e = 0;
      ++r;
    }
  }
}

template <typename T>
void poisson_chunk(const T* mean, T* out, int64_t start, int count, int64_t row_size,
                   const int64_t* index, Key key, uint32_t realisation) {
  uint32_t row[kChunk], elem[kChunk];
  double lam[kChunk], k[kChunk];
  // pending elements of later passes, compacted
  int pos[kChunk];
  uint32_t prow[kChunk], pelem[kChunk];
  double plam[kChunk], pk[kChunk];
  for (int j = 0; j < count; ++j) lam[j] = static_cast<double>(mean[start + j]);
  chunk_counters(start, count, row_size, index, row, elem);
  Scratch scratch;
  ptrs_pass(lam, row, elem, count, key, realisation, 0u, k, scratch);
  int small = 0;  // means outside [10, inf): zero or inversion
  for (int j = 0; j < count; ++j) small += !(lam[j] >= 10.0);
  if (small) {
    // means in (0, 10): vectorised inversion
    int m = 0;
    for (int j = 0; j < count; ++j) {  // branch-free compaction
      pos[m] = j;
      prow[m] = row[j];
      pelem[m] = elem[j];
      plam[m] = lam[j];
      m += (lam[j] > 0.0) & (lam[j] < 10.0);
      k[j] = lam[j] > 0.0 ? k[j] : 0.0;
    }
    if (m) {
      inversion_pass(plam, prow, pelem, m, key, realisation, pk);
      for (int i = 0; i < m; ++i) k[pos[i]] = pk[i];
    }
  }
  // later passes: the elements rejected so far, compacted (first from the chunk, then from
  // the previous pass's list)
  int m = 0;
  for (int j = 0; j < count; ++j) {  // branch-free compaction
    pos[m] = j;
    prow[m] = row[j];
    pelem[m] = elem[j];
    plam[m] = lam[j];
    m += k[j] == kRejected;
  }
  for (uint32_t it = 1; it < kVectorPasses && m > 0; ++it) {
    ptrs_pass(plam, prow, pelem, m, key, realisation, it, pk, scratch);
    int m2 = 0;
    for (int i = 0; i < m; ++i) {
      k[pos[i]] = pk[i];
      pos[m2] = pos[i];
      prow[m2] = prow[i];
      pelem[m2] = pelem[i];
      plam[m2] = plam[i];
      m2 += pk[i] == kRejected;
    }
    m = m2;
  }
  for (int j = 0; j < count; ++j) {
    double kj = k[j];
    if (kj < 0.0) kj = poisson_draw(lam[j], key, row[j], realisation, elem[j]);
    out[start + j] = static_cast<T>(kj);
  }
}

// ---- binomial ------------------------------------------------------------------------------

// BTRS for Binomial(n, q) (q <= 1/2, n q >= 10) from Philox block `it`, first step: the
// proposal and the squeeze. k (accepted, before the p > 1/2 flip), kRejected (outside [0, n])
// or kPending (the exact test decides, btrs_test). Branch-free so that it vectorises.
GG_CLONES void btrs_propose(const double* __restrict__ nn, const double* __restrict__ qq,
                            const uint32_t* __restrict__ row, const uint32_t* __restrict__ elem,
                            int count, Key key, uint32_t realisation, uint32_t it,
                            double* __restrict__ k_out, double* __restrict__ prop,
                            double* __restrict__ us_out, double* __restrict__ v_out) {
  const uint32_t c3 = stream_word(kStreamBinomial, it);
  for (int j = 0; j < count; ++j) {
    const double n = nn[j];
    const BtrsConstants t = btrs_constants(n, qq[j]);
    const U32x4 r = philox4x32_10(row[j], realisation, elem[j], c3, key.k0, key.k1);
    double us, v;
    const double k = btrs_proposal(t, r, &us, &v);
    const bool outside = (k < 0.0) | (k > n);
    const bool squeeze = (us >= 0.07) & (v <= t.v_r);
    prop[j] = k;
    us_out[j] = us;
    v_out[j] = v;
    k_out[j] = outside ? kRejected : (squeeze ? k : kPending);
  }
}

// Second step, on the compacted pending proposals: the exact test as binomial_draw does it,
// k, kRejected or kScalar (a Stirling tail below 10 needs the table).
GG_CLONES void btrs_test(const double* __restrict__ nn, const double* __restrict__ qq,
                         const double* __restrict__ prop, const double* __restrict__ us_in,
                         const double* __restrict__ v_in, int count,
                         double* __restrict__ k_out) {
  for (int j = 0; j < count; ++j) {
    const double n = nn[j], k = prop[j];
    const BtrsConstants t = btrs_constants(n, qq[j]);
    const double nm = n - t.mode, nk = n - k;
    const bool series = (t.mode >= 10.0) & (nm >= 10.0) & (k >= 10.0) & (nk >= 10.0);
    const bool exact = btrs_exact(t, n, k, us_in[j], v_in[j], stirling_series(t.mode),
                                  stirling_series(nm), stirling_series(k), stirling_series(nk));
    k_out[j] = series ? (exact ? k : kRejected) : kScalar;
  }
}

struct BtrsScratch {
  int pos[kChunk];
  double prop[kChunk], us[kChunk], v[kChunk];
  double tn[kChunk], tq[kChunk], tprop[kChunk], tus[kChunk], tv[kChunk], tk[kChunk];
};

void btrs_pass(const double* nn, const double* qq, const uint32_t* row, const uint32_t* elem,
               int count, Key key, uint32_t realisation, uint32_t it, double* k_out,
               BtrsScratch& s) {
  btrs_propose(nn, qq, row, elem, count, key, realisation, it, k_out, s.prop, s.us, s.v);
  int m = 0;
  for (int j = 0; j < count; ++j) {  // branch-free compaction
    s.pos[m] = j;
    s.tn[m] = nn[j];
    s.tq[m] = qq[j];
    s.tprop[m] = s.prop[j];
    s.tus[m] = s.us[j];
    s.tv[m] = s.v[j];
    m += k_out[j] == kPending;
  }
  if (m == 0) return;
  btrs_test(s.tn, s.tq, s.tprop, s.tus, s.tv, m, s.tk);
  for (int i = 0; i < m; ++i) k_out[s.pos[i]] = s.tk[i];
}

// Inversion for Binomial(n, q), n q < 10, from Philox block 0, run in lock step: k, or kScalar
// where the search passed its cap (binomial_draw restarts with the next block).
GG_CLONES void binomial_inversion_pass(const double* __restrict__ nn,
                                       const double* __restrict__ qq,
                                       const uint32_t* __restrict__ row,
                                       const uint32_t* __restrict__ elem, int count, Key key,
                                       uint32_t realisation, double* __restrict__ k_out) {
  double u[kChunk], pk[kChunk], s[kChunk], cap[kChunk], stop[kChunk];
  const uint32_t c3 = stream_word(kStreamBinomial, 0u);
  for (int j = 0; j < count; ++j) {
    const double n = nn[j], q = qq[j];
    const U32x4 r = philox4x32_10(row[j], realisation, elem[j], c3, key.k0, key.k1);
    u[j] = u01_open(r.v[0], r.v[1]);
    pk[j] = binomial_p0(n, q);
    s[j] = q / (1.0 - q);
    cap[j] = binomial_cap(n, n * q);
    stop[j] = 0.0;
    k_out[j] = 0.0;
  }
  for (;;) {
    int active = 0;
    for (int j = 0; j < count; ++j) {
      const bool go = (u[j] > pk[j]) & (stop[j] == 0.0);
      const double uj = u[j] - pk[j];
      const double kj = k_out[j] + 1.0;
      const bool over = kj > cap[j];
      const double pj = pk[j] * (s[j] * (nn[j] - kj + 1.0) / kj);
      u[j] = go ? uj : u[j];
      k_out[j] = go ? kj : k_out[j];
      stop[j] = (go & over) ? 1.0 : stop[j];
      pk[j] = (go & !over) ? pj : pk[j];
      active += go & !over;
    }
    if (active == 0) break;
  }
  for (int j = 0; j < count; ++j) k_out[j] = stop[j] == 0.0 ? k_out[j] : kScalar;
}

template <typename T>
void binomial_chunk(const T* counts, const double* p, double p_scalar, T* out, int64_t start,
                    int count, int64_t row_size, const int64_t* index, Key key,
                    uint32_t realisation) {
  uint32_t row[kChunk], elem[kChunk];
  double n[kChunk], pp[kChunk], q[kChunk], k[kChunk];
  int pos[kChunk];
  uint32_t prow[kChunk], pelem[kChunk];
  double pn[kChunk], pq[kChunk], pk[kChunk];
  for (int j = 0; j < count; ++j) {
    n[j] = static_cast<double>(counts[start + j]);
    pp[j] = p ? p[start + j] : p_scalar;
  }
  chunk_counters(start, count, row_size, index, row, elem);
  // k: the draw before the p > 1/2 flip, or kScalar (special cases, fallbacks)
  for (int j = 0; j < count; ++j) {
    const double pj = pp[j];
    q[j] = pj > 0.5 ? 1.0 - pj : pj;
    k[j] = kScalar;
  }
  // inversion (n q < 10) in lock step
  int m = 0;
  for (int j = 0; j < count; ++j) {  // branch-free compaction
    pos[m] = j;
    prow[m] = row[j];
    pelem[m] = elem[j];
    pn[m] = n[j];
    pq[m] = q[j];
    m += (n[j] > 0.0) & (pp[j] > 0.0) & (pp[j] < 1.0) & (n[j] * q[j] < 10.0);
  }
  if (m) {
    binomial_inversion_pass(pn, pq, prow, pelem, m, key, realisation, pk);
    for (int i = 0; i < m; ++i) k[pos[i]] = pk[i];
  }
  // BTRS (n q >= 10), passes over the elements whose proposals were all rejected so far
  m = 0;
  for (int j = 0; j < count; ++j) {
    pos[m] = j;
    prow[m] = row[j];
    pelem[m] = elem[j];
    pn[m] = n[j];
    pq[m] = q[j];
    m += (n[j] > 0.0) & (pp[j] > 0.0) & (pp[j] < 1.0) & (n[j] * q[j] >= 10.0);
  }
  BtrsScratch scratch;
  for (uint32_t it = 0; it < kVectorPasses && m > 0; ++it) {
    btrs_pass(pn, pq, prow, pelem, m, key, realisation, it, pk, scratch);
    int m2 = 0;
    for (int i = 0; i < m; ++i) {
      k[pos[i]] = pk[i];
      pos[m2] = pos[i];
      prow[m2] = prow[i];
      pelem[m2] = pelem[i];
      pn[m2] = pn[i];
      pq[m2] = pq[i];
      m2 += pk[i] == kRejected;
    }
    m = m2;
  }
  for (int j = 0; j < count; ++j) {
    double kj = k[j];
    const bool regular = (n[j] > 0.0) & (pp[j] > 0.0) & (pp[j] < 1.0);
    if (regular && kj >= 0.0) {
      kj = pp[j] > 0.5 ? n[j] - kj : kj;
    } else {
      kj = binomial_draw(n[j], pp[j], key, row[j], realisation, elem[j]);
    }
    out[start + j] = static_cast<T>(kj);
  }
}

}  // namespace

template <typename T>
void poisson(const T* mean, T* out, int64_t rows, int64_t row_size, const int64_t* index,
             uint64_t seed, uint32_t realisation) {
  const int64_t n = rows * row_size;
  if (n == 0) return;
  const Key key = make_key(seed);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t ci = 0; ci < chunks; ++ci) {
    const int64_t start = ci * kChunk;
    const int count = static_cast<int>(n - start < kChunk ? n - start : kChunk);
    poisson_chunk<T>(mean, out, start, count, row_size, index, key, realisation);
  }
}

template <typename T>
void binomial_thin(const T* counts, const double* p, double p_scalar, T* out, int64_t rows,
                   int64_t row_size, const int64_t* index, uint64_t seed, uint32_t realisation) {
  const int64_t n = rows * row_size;
  if (n == 0) return;
  const Key key = make_key(seed);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t ci = 0; ci < chunks; ++ci) {
    const int64_t start = ci * kChunk;
    const int count = static_cast<int>(n - start < kChunk ? n - start : kChunk);
    binomial_chunk<T>(counts, p, p_scalar, out, start, count, row_size, index, key, realisation);
  }
}

template void poisson<float>(const float*, float*, int64_t, int64_t, const int64_t*, uint64_t,
                             uint32_t);
template void poisson<double>(const double*, double*, int64_t, int64_t, const int64_t*, uint64_t,
                              uint32_t);
template void binomial_thin<float>(const float*, const double*, double, float*, int64_t, int64_t,
                                   const int64_t*, uint64_t, uint32_t);
template void binomial_thin<double>(const double*, const double*, double, double*, int64_t,
                                    int64_t, const int64_t*, uint64_t, uint32_t);
template void binomial_thin<int32_t>(const int32_t*, const double*, double, int32_t*, int64_t,
                                     int64_t, const int64_t*, uint64_t, uint32_t);
template void binomial_thin<int64_t>(const int64_t*, const double*, double, int64_t*, int64_t,
                                     int64_t, const int64_t*, uint64_t, uint32_t);

}  // namespace cpu
}  // namespace galguard
