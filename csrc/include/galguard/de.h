// One-pixel differential evolution: per-gene and per-member math shared by the CPU and CUDA
// twins and mirrored in galguard/_reference.py. All arithmetic on genes is float32 with no
// fused multiply-add (the build disables contraction), so every backend gives identical bits.
//
// Member layout (G = pixels * (2 + C) genes): [x_0, y_0, v_0[0..C-1], x_1, y_1, ...].
// Positions are continuous in [0, W) and [0, H); the pixel is (int(y), int(x)).
// Values of band c lie in [lo[c], hi[c]].
//
// Randomness (Philox counter = (id, generation, member, stream << 24 | sub)):
//   init:     (id, 0, member, kStreamDEInit << 24 | gene)   word 0 -> the gene's uniform
//   choice:   (id, generation, member, kStreamDEChoice << 24) words 0..2 -> distinct donors,
//             word 3 -> jrand, the gene always taken from the mutant when CR < 1
//   per gene: (id, generation, member, kStreamDEGene << 24 | gene)  word 0 -> crossover
//             uniform, word 1 -> redraw uniform
#pragma once

#include <math.h>

#include "common.h"
#include "philox.h"

namespace galguard {

enum Strategy : int { kRand1 = 0, kBest1 = 1 };
enum OOB : int { kRedraw = 0, kClip = 1 };

// Largest float strictly below `extent` (extent > 0).
GG_HOST_DEVICE GG_FORCEINLINE float below(float extent) { return nextafterf(extent, 0.0f); }

// Uniform position in [0, extent) from u in [0, 1).
GG_HOST_DEVICE GG_FORCEINLINE float uniform_position(float u, float extent) {
  const float x = u * extent;
  return x < extent ? x : below(extent);
}

// Uniform value in [lo, hi] from u in [0, 1).
GG_HOST_DEVICE GG_FORCEINLINE float uniform_value(float u, float lo, float hi) {
  const float v = lo + u * (hi - lo);
  return v > hi ? hi : (v < lo ? lo : v);
}

// Gene g of a member: 0 -> x, 1 -> y, 2 + c -> band c.
GG_HOST_DEVICE GG_FORCEINLINE float gene_uniform(float u, int g, int channels, float height,
                                                 float width, const float* lo, const float* hi) {
  const int j = g % (2 + channels);
  if (j == 0) return uniform_position(u, width);
  if (j == 1) return uniform_position(u, height);
  return uniform_value(u, lo[j - 2], hi[j - 2]);
}

GG_HOST_DEVICE GG_FORCEINLINE float de_init_gene(Key key, uint32_t id, uint32_t member, int g,
                                                 int channels, float height, float width,
                                                 const float* lo, const float* hi) {
  const U32x4 r = philox4x32_10(id, 0u, member, stream_word(kStreamDEInit, (uint32_t)g), key.k0,
                                key.k1);
  return gene_uniform(u01_float(r.v[0]), g, channels, height, width, lo, hi);
}

// Pixel index of a continuous position, clamped into [0, extent - 1] (NaN -> 0).
GG_HOST_DEVICE GG_FORCEINLINE int pixel_index(float x, int extent) {
  if (!(x >= 0.0f)) return 0;
  if (x >= (float)extent) return extent - 1;
  const int i = (int)x;
  return i < extent ? i : extent - 1;
}

// Distinct donor indices in [0, P) \ {self}: n = 2 or 3 of them.
GG_HOST_DEVICE GG_FORCEINLINE void choose_donors(U32x4 r, uint32_t P, uint32_t self, int n,
                                                 uint32_t* out) {
  uint32_t ex[4];
  int nex = 1;
  ex[0] = self;
  for (int d = 0; d < n; ++d) {
    uint32_t v = uniform_int(r.v[d], P - (uint32_t)nex);
    // ex is kept sorted; map v onto the complement of ex
    for (int e = 0; e < nex; ++e) {
      if (v >= ex[e]) ++v;
    }
    out[d] = v;
    // insert v into ex (sorted)
    int pos = nex;
    while (pos > 0 && ex[pos - 1] > v) {
      ex[pos] = ex[pos - 1];
      --pos;
    }
    ex[pos] = v;
    ++nex;
  }
}

// Trial member i of one image. pop: (P, G) of this image; out: (G,).
GG_HOST_DEVICE inline void de_mutate_member(const float* pop, uint32_t P, int G, uint32_t i,
                                            int strategy, int64_t best, float F, float CR,
                                            int oob, Key key, uint32_t id, uint32_t generation,
                                            int channels, float height, float width,
                                            const float* lo, const float* hi, float* out) {
  const U32x4 r = philox4x32_10(id, generation, i, stream_word(kStreamDEChoice, 0u), key.k0,
                                key.k1);
  uint32_t d[3];
  uint32_t base, a, b;
  if (strategy == kBest1) {
    choose_donors(r, P, i, 2, d);
    base = (uint32_t)best;
    a = d[0];
    b = d[1];
  } else {
    choose_donors(r, P, i, 3, d);
    base = d[0];
    a = d[1];
    b = d[2];
  }
  const bool crossover = CR < 1.0f;
  const uint32_t jrand = uniform_int(r.v[3], (uint32_t)G);
  const float* pb = pop + (size_t)base * G;
  const float* pa = pop + (size_t)a * G;
  const float* pc = pop + (size_t)b * G;
  const float* parent = pop + (size_t)i * G;
  for (int g = 0; g < G; ++g) {
    bool have_gene_rand = false;
    U32x4 rg;
    if (crossover && (uint32_t)g != jrand) {
      rg = philox4x32_10(id, generation, i, stream_word(kStreamDEGene, (uint32_t)g), key.k0,
                         key.k1);
      have_gene_rand = true;
      if (!(u01_float(rg.v[0]) < CR)) {
        out[g] = parent[g];
        continue;
      }
    }
    const float diff = pa[g] - pc[g];
    const float step = F * diff;
    float v = pb[g] + step;
    const int j = g % (2 + channels);
    float lower, upper;
    bool in_bounds;
    if (j < 2) {
      lower = 0.0f;
      upper = j == 0 ? width : height;
      in_bounds = v >= lower && v < upper;
    } else {
      lower = lo[j - 2];
      upper = hi[j - 2];
      in_bounds = v >= lower && v <= upper;
    }
    if (!in_bounds) {
      if (oob == kClip && v == v) {
        if (v < lower) {
          v = lower;
        } else {
          v = j < 2 ? below(upper) : upper;
        }
      } else {
        if (!have_gene_rand) {
          rg = philox4x32_10(id, generation, i, stream_word(kStreamDEGene, (uint32_t)g), key.k0,
                             key.k1);
        }
        v = gene_uniform(u01_float(rg.v[1]), g, channels, height, width, lo, hi);
      }
    }
    out[g] = v;
  }
}

// Greedy selection of member i: returns true where the trial replaces the parent.
// NaN fitness counts as worse than any number.
GG_HOST_DEVICE GG_FORCEINLINE bool de_accept(double parent_fitness, double trial_fitness) {
  if (trial_fitness != trial_fitness) return false;
  if (parent_fitness != parent_fitness) return true;
  return trial_fitness <= parent_fitness;
}

// Writes the pixels of one member into `dst`, a (channels, height, width) image: pixel j goes
// to (pixel_index(y_j), pixel_index(x_j)) in every band; later pixels win where two coincide.
GG_HOST_DEVICE inline void write_member_pixels(const float* member, float* dst, int pixels,
                                               int channels, int height, int width) {
  const int64_t plane = static_cast<int64_t>(height) * width;
  for (int j = 0; j < pixels; ++j) {
    const float* gene = member + j * (2 + channels);
    const int x = pixel_index(gene[0], width);
    const int y = pixel_index(gene[1], height);
    for (int c = 0; c < channels; ++c) {
      dst[c * plane + static_cast<int64_t>(y) * width + x] = gene[2 + c];
    }
  }
}

// Index of the first smallest of P fitness values, NaN counting as +inf (0 when all are NaN).
template <typename T>
GG_HOST_DEVICE inline int64_t first_argmin(const T* fitness, int64_t P) {
  int64_t arg = 0;
  double best_value = 0.0;
  for (int64_t i = 0; i < P; ++i) {
    const T f = fitness[i];
    const double fv = (f != f) ? INFINITY : (double)f;
    if (i == 0 || fv < best_value) {
      best_value = fv;
      arg = i;
    }
  }
  return arg;
}

}  // namespace galguard
