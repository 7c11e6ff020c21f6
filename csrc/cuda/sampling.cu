// CUDA twins of the Poisson and binomial-thinning kernels (same math as csrc/cpu/sampling.cpp,
// from include/galguard/sampling.h).
#include <cstdint>

#include "galguard/kernels.h"
#include "galguard/sampling.h"
#include "launch.cuh"

namespace galguard {
namespace cuda {

namespace {

template <typename T>
__global__ void poisson_kernel(const T* __restrict__ mean, T* __restrict__ out, int64_t n,
                               int64_t row_size, const int64_t* __restrict__ index, Key key,
                               uint32_t realisation) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / row_size;
    const uint32_t e = static_cast<uint32_t>(i - r * row_size);
    const uint32_t row = row_id(index, r);
    out[i] = static_cast<T>(poisson_draw(static_cast<double>(mean[i]), key, row, realisation, e));
  }
}

template <typename T>
__global__ void binomial_kernel(const T* __restrict__ counts, const double* __restrict__ p,
                                double p_scalar, T* __restrict__ out, int64_t n, int64_t row_size,
                                const int64_t* __restrict__ index, Key key,
                                uint32_t realisation) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / row_size;
    const uint32_t e = static_cast<uint32_t>(i - r * row_size);
    const uint32_t row = row_id(index, r);
    const double pi = p ? p[i] : p_scalar;
    out[i] = static_cast<T>(
        binomial_draw(static_cast<double>(counts[i]), pi, key, row, realisation, e));
  }
}

}  // namespace

template <typename T>
int poisson(const T* mean, T* out, int64_t rows, int64_t row_size, const int64_t* index,
            uint64_t seed, uint32_t realisation, void* stream) {
  const int64_t n = rows * row_size;
  if (n == 0) return 0;
  poisson_kernel<T><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
      mean, out, n, row_size, index, make_key(seed), realisation);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int binomial_thin(const T* counts, const double* p, double p_scalar, T* out, int64_t rows,
                  int64_t row_size, const int64_t* index, uint64_t seed, uint32_t realisation,
                  void* stream) {
  const int64_t n = rows * row_size;
  if (n == 0) return 0;
  binomial_kernel<T><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
      counts, p, p_scalar, out, n, row_size, index, make_key(seed), realisation);
  return static_cast<int>(cudaGetLastError());
}

template int poisson<float>(const float*, float*, int64_t, int64_t, const int64_t*, uint64_t,
                            uint32_t, void*);
template int poisson<double>(const double*, double*, int64_t, int64_t, const int64_t*, uint64_t,
                             uint32_t, void*);
template int binomial_thin<float>(const float*, const double*, double, float*, int64_t, int64_t,
                                  const int64_t*, uint64_t, uint32_t, void*);
template int binomial_thin<double>(const double*, const double*, double, double*, int64_t,
                                   int64_t, const int64_t*, uint64_t, uint32_t, void*);
template int binomial_thin<int32_t>(const int32_t*, const double*, double, int32_t*, int64_t,
                                    int64_t, const int64_t*, uint64_t, uint32_t, void*);
template int binomial_thin<int64_t>(const int64_t*, const double*, double, int64_t*, int64_t,
                                    int64_t, const int64_t*, uint64_t, uint32_t, void*);

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }
int get_device(int* device) { return static_cast<int>(cudaGetDevice(device)); }
int set_device(int device) { return static_cast<int>(cudaSetDevice(device)); }

}  // namespace cuda
}  // namespace galguard
