// Launchers of the galguard kernels. The CPU twins (namespace galguard::cpu, csrc/cpu) and the
// CUDA twins (galguard::cuda, csrc/cuda) take the same arguments; the CUDA ones also take the
// caller's stream (a cudaStream_t passed as void*) and return a cudaError_t as int (0 = ok).
// All pointers are to C-contiguous arrays on the launcher's device.
#pragma once

#include <cstdint>

namespace galguard {

namespace cpu {
// out[r, e] ~ Poisson(mean[r, e]); row id index[r] (index == nullptr: r).
template <typename T>
void poisson(const T* mean, T* out, int64_t rows, int64_t row_size, const int64_t* index,
             uint64_t seed, uint32_t realisation);
// out[r, e] ~ Binomial(counts[r, e], p ? p[r, e] : p_scalar).
template <typename T>
void binomial_thin(const T* counts, const double* p, double p_scalar, T* out, int64_t rows,
                   int64_t row_size, const int64_t* index, uint64_t seed, uint32_t realisation);
void de_init(const int64_t* ids, const float* lo, const float* hi, float* pop, int64_t B,
             int64_t P, int pixels, int channels, int height, int width, uint64_t seed);
void de_mutate(const float* pop, const int64_t* ids, const int64_t* best, const float* lo,
               const float* hi, float* trial, int64_t B, int64_t P, int G, int channels,
               int height, int width, uint32_t generation, float F, float CR, int strategy,
               int oob, uint64_t seed);
void de_write_candidates(const float* images, const float* members, float* out, int64_t B,
                         int64_t P, int G, int channels, int height, int width);
template <typename T>
void de_select(const float* pop, const T* fitness, const float* trial, const T* trial_fitness,
               float* out_pop, T* out_fitness, int64_t* best, int64_t B, int64_t P, int G);
void set_num_threads(int n);
int get_max_threads();
bool have_openmp();
}  // namespace cpu

namespace cuda {
template <typename T>
int poisson(const T* mean, T* out, int64_t rows, int64_t row_size, const int64_t* index,
            uint64_t seed, uint32_t realisation, void* stream);
template <typename T>
int binomial_thin(const T* counts, const double* p, double p_scalar, T* out, int64_t rows,
                  int64_t row_size, const int64_t* index, uint64_t seed, uint32_t realisation,
                  void* stream);
int de_init(const int64_t* ids, const float* lo, const float* hi, float* pop, int64_t B,
            int64_t P, int pixels, int channels, int height, int width, uint64_t seed,
            void* stream);
int de_mutate(const float* pop, const int64_t* ids, const int64_t* best, const float* lo,
              const float* hi, float* trial, int64_t B, int64_t P, int G, int channels,
              int height, int width, uint32_t generation, float F, float CR, int strategy,
              int oob, uint64_t seed, void* stream);
int de_write_candidates(const float* images, const float* members, float* out, int64_t B,
                        int64_t P, int G, int channels, int height, int width, void* stream);
template <typename T>
int de_select(const float* pop, const T* fitness, const float* trial, const T* trial_fitness,
              float* out_pop, T* out_fitness, int64_t* best, int64_t B, int64_t P, int G,
              void* stream);
// Device helpers for the bindings.
const char* error_string(int code);
int get_device(int* device);
int set_device(int device);
}  // namespace cuda

}  // namespace galguard
