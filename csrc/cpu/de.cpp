// CPU twins of the differential-evolution kernels (OpenMP over members or images).
#include <cstdint>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "galguard/de.h"
#include "galguard/kernels.h"

namespace galguard {
namespace cpu {

void set_num_threads(int n) {
#ifdef _OPENMP
  omp_set_num_threads(n);
#else
  (void)n;
#endif
}

int get_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

bool have_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

void de_init(const int64_t* ids, const float* lo, const float* hi, float* pop, int64_t B,
             int64_t P, int pixels, int channels, int height, int width, uint64_t seed) {
  const int G = pixels * (2 + channels);
  const int64_t n = B * P;
  if (n == 0) return;
  const Key key = make_key(seed);
#pragma omp parallel for schedule(static) if (n * G > 16384)
  for (int64_t bm = 0; bm < n; ++bm) {
    const int64_t b = bm / P;
    const uint32_t m = static_cast<uint32_t>(bm - b * P);
    float* dst = pop + bm * G;
    for (int g = 0; g < G; ++g) {
      dst[g] = de_init_gene(key, static_cast<uint32_t>(ids[b]), m, g, channels, (float)height,
                            (float)width, lo + b * channels, hi + b * channels);
    }
  }
}

void de_mutate(const float* pop, const int64_t* ids, const int64_t* best, const float* lo,
               const float* hi, float* trial, int64_t B, int64_t P, int G, int channels,
               int height, int width, uint32_t generation, float F, float CR, int strategy,
               int oob, uint64_t seed) {
  const int64_t n = B * P;
  if (n == 0) return;
  const Key key = make_key(seed);
#pragma omp parallel for schedule(static) if (n * G > 16384)
  for (int64_t bm = 0; bm < n; ++bm) {
    const int64_t b = bm / P;
    const uint32_t i = static_cast<uint32_t>(bm - b * P);
    de_mutate_member(pop + b * P * G, static_cast<uint32_t>(P), G, i, strategy,
                     best ? best[b] : 0, F, CR, oob, key, static_cast<uint32_t>(ids[b]),
                     generation, channels, (float)height, (float)width, lo + b * channels,
                     hi + b * channels, trial + bm * G);
  }
}

void de_write_candidates(const float* images, const float* members, float* out, int64_t B,
                         int64_t P, int G, int channels, int height, int width) {
  const int64_t n = B * P;
  if (n == 0) return;
  const int64_t plane = static_cast<int64_t>(height) * width;
  const int64_t image = plane * channels;
  const int pixels = G / (2 + channels);
#pragma omp parallel for schedule(static) if (n > 1)
  for (int64_t bm = 0; bm < n; ++bm) {
    const int64_t b = bm / P;
    float* dst = out + bm * image;
    std::memcpy(dst, images + b * image, sizeof(float) * static_cast<size_t>(image));
    write_member_pixels(members + bm * G, dst, pixels, channels, height, width);
  }
}

template <typename T>
void de_select(const float* pop, const T* fitness, const float* trial, const T* trial_fitness,
               float* out_pop, T* out_fitness, int64_t* best, int64_t B, int64_t P, int G) {
  if (B * P == 0) return;
#pragma omp parallel for schedule(static) if (B * P * G > 65536)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < P; ++i) {
      const int64_t bi = b * P + i;
      const bool take = de_accept((double)fitness[bi], (double)trial_fitness[bi]);
      const float* src = take ? trial + bi * G : pop + bi * G;
      std::memcpy(out_pop + bi * G, src, sizeof(float) * static_cast<size_t>(G));
      out_fitness[bi] = take ? trial_fitness[bi] : fitness[bi];
    }
    best[b] = first_argmin(out_fitness + b * P, P);
  }
}

template void de_select<float>(const float*, const float*, const float*, const float*, float*,
                               float*, int64_t*, int64_t, int64_t, int);
template void de_select<double>(const float*, const double*, const float*, const double*, float*,
                                double*, int64_t*, int64_t, int64_t, int);

}  // namespace cpu
}  // namespace galguard
