// Shared definitions for the galguard compiled core: host/device qualifiers and the layout of
// the Philox counter. Nothing here knows about Python or torch.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GG_HOST_DEVICE __host__ __device__
#define GG_FORCEINLINE __forceinline__
#else
#define GG_HOST_DEVICE
#define GG_FORCEINLINE inline __attribute__((always_inline))
#endif

namespace galguard {

// Stream identifiers: the top 8 bits of the fourth Philox counter word. The low 24 bits hold a
// sub-counter (rejection-loop iteration or gene index). Counter words 0..2 are
// (global row / image id, realisation / generation, element / member).
enum Stream : uint32_t {
  kStreamPoisson = 1u,
  kStreamBinomial = 2u,
  kStreamDEInit = 3u,
  kStreamDEChoice = 4u,
  kStreamDEGene = 5u,
};

GG_HOST_DEVICE GG_FORCEINLINE uint32_t stream_word(uint32_t stream, uint32_t sub) {
  return (stream << 24) | (sub & 0x00FFFFFFu);
}

// The row id keying row r's random stream: the caller's global id, or r itself.
GG_HOST_DEVICE GG_FORCEINLINE uint32_t row_id(const int64_t* index, int64_t r) {
  return static_cast<uint32_t>(index ? index[r] : r);
}

}  // namespace galguard
