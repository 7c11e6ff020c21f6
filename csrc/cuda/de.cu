// CUDA twins of the differential-evolution kernels (same math as csrc/cpu/de.cpp, from
// include/galguard/de.h).
#include <cstdint>

#include "galguard/de.h"
#include "galguard/kernels.h"
#include "launch.cuh"

namespace galguard {
namespace cuda {

namespace {

__global__ void de_init_kernel(const int64_t* __restrict__ ids, const float* __restrict__ lo,
                               const float* __restrict__ hi, float* __restrict__ pop, int64_t n,
                               int64_t P, int G, int channels, float height, float width,
                               Key key) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < n;
       t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t bm = t / G;
    const int g = static_cast<int>(t - bm * G);
    const int64_t b = bm / P;
    const uint32_t m = static_cast<uint32_t>(bm - b * P);
    pop[t] = de_init_gene(key, static_cast<uint32_t>(ids[b]), m, g, channels, height, width,
                          lo + b * channels, hi + b * channels);
  }
}

__global__ void de_mutate_kernel(const float* __restrict__ pop, const int64_t* __restrict__ ids,
                                 const int64_t* __restrict__ best, const float* __restrict__ lo,
                                 const float* __restrict__ hi, float* __restrict__ trial,
                                 int64_t n, int64_t P, int G, int channels, float height,
                                 float width, uint32_t generation, float F, float CR,
                                 int strategy, int oob, Key key) {
  for (int64_t bm = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; bm < n;
       bm += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = bm / P;
    const uint32_t i = static_cast<uint32_t>(bm - b * P);
    de_mutate_member(pop + b * P * G, static_cast<uint32_t>(P), G, i, strategy,
                     best ? best[b] : 0, F, CR, oob, key, static_cast<uint32_t>(ids[b]),
                     generation, channels, height, width, lo + b * channels, hi + b * channels,
                     trial + bm * G);
  }
}

__global__ void copy_images_kernel(const float* __restrict__ images, float* __restrict__ out,
                                   int64_t n, int64_t image, int64_t P) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < n;
       t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t bm = t / image;
    const int64_t off = t - bm * image;
    out[t] = images[(bm / P) * image + off];
  }
}

__global__ void set_pixels_kernel(const float* __restrict__ members, float* __restrict__ out,
                                  int64_t n, int G, int channels, int height, int width) {
  const int64_t image = static_cast<int64_t>(height) * width * channels;
  const int pixels = G / (2 + channels);
  for (int64_t bm = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; bm < n;
       bm += (int64_t)gridDim.x * blockDim.x) {
    write_member_pixels(members + bm * G, out + bm * image, pixels, channels, height, width);
  }
}

template <typename T>
__global__ void select_members_kernel(const float* __restrict__ pop, const T* __restrict__ fitness,
                                      const float* __restrict__ trial,
                                      const T* __restrict__ trial_fitness,
                                      float* __restrict__ out_pop, T* __restrict__ out_fitness,
                                      int64_t n, int G) {
  for (int64_t bi = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; bi < n;
       bi += (int64_t)gridDim.x * blockDim.x) {
    const bool take = de_accept((double)fitness[bi], (double)trial_fitness[bi]);
    const float* src = take ? trial + bi * G : pop + bi * G;
    for (int g = 0; g < G; ++g) out_pop[bi * G + g] = src[g];
    out_fitness[bi] = take ? trial_fitness[bi] : fitness[bi];
  }
}

template <typename T>
__global__ void argmin_kernel(const T* __restrict__ fitness, int64_t* __restrict__ best,
                              int64_t B, int64_t P) {
  for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < B;
       b += (int64_t)gridDim.x * blockDim.x) {
    best[b] = first_argmin(fitness + b * P, P);
  }
}

}  // namespace

int de_init(const int64_t* ids, const float* lo, const float* hi, float* pop, int64_t B,
            int64_t P, int pixels, int channels, int height, int width, uint64_t seed,
            void* stream) {
  const int G = pixels * (2 + channels);
  const int64_t n = B * P * G;
  if (n == 0) return 0;
  de_init_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
      ids, lo, hi, pop, n, P, G, channels, (float)height, (float)width, make_key(seed));
  return static_cast<int>(cudaGetLastError());
}

int de_mutate(const float* pop, const int64_t* ids, const int64_t* best, const float* lo,
              const float* hi, float* trial, int64_t B, int64_t P, int G, int channels,
              int height, int width, uint32_t generation, float F, float CR, int strategy,
              int oob, uint64_t seed, void* stream) {
  const int64_t n = B * P;
  if (n == 0) return 0;
  de_mutate_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
      pop, ids, best, lo, hi, trial, n, P, G, channels, (float)height, (float)width, generation,
      F, CR, strategy, oob, make_key(seed));
  return static_cast<int>(cudaGetLastError());
}

int de_write_candidates(const float* images, const float* members, float* out, int64_t B,
                        int64_t P, int G, int channels, int height, int width, void* stream) {
  const int64_t image = static_cast<int64_t>(height) * width * channels;
  const int64_t n = B * P * image;
  if (n == 0) return 0;
  copy_images_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(images, out, n, image, P);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  set_pixels_kernel<<<blocks_for(B * P), kThreads, 0, as_stream(stream)>>>(
      members, out, B * P, G, channels, height, width);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int de_select(const float* pop, const T* fitness, const float* trial, const T* trial_fitness,
              float* out_pop, T* out_fitness, int64_t* best, int64_t B, int64_t P, int G,
              void* stream) {
  const int64_t n = B * P;
  if (n == 0) return 0;
  select_members_kernel<T><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
      pop, fitness, trial, trial_fitness, out_pop, out_fitness, n, G);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  argmin_kernel<T><<<blocks_for(B), kThreads, 0, as_stream(stream)>>>(out_fitness, best, B, P);
  return static_cast<int>(cudaGetLastError());
}

template int de_select<float>(const float*, const float*, const float*, const float*, float*,
                              float*, int64_t*, int64_t, int64_t, int, void*);
template int de_select<double>(const float*, const double*, const float*, const double*, float*,
                               double*, int64_t*, int64_t, int64_t, int, void*);

}  // namespace cuda
}  // namespace galguard
