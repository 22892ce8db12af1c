/* Per-element bodies of the sampling loop's kernels, written once for the CPU and the GPU.
 *
 * A "body" does the work of one independent unit: one Philox block (up to four consecutive
 * elements) of one sample for the noise kernels, one pixel for the vote kernel.  The OpenMP
 * loops in src/cpu.cpp and the grid-stride CUDA kernels in src/cuda.cu only enumerate units and
 * call these functions, so both produce the same bits.
 *
 * Float32 arithmetic goes through fmul/fadd, which are __fmul_rn/__fadd_rn on the device (never
 * contracted into an FMA) and plain operators on the host (compiled with -ffp-contract=off).
 */
#ifndef CERTSEG_KERNELS_H
#define CERTSEG_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "certseg/philox.h"

namespace certseg {

CERTSEG_HD inline float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

CERTSEG_HD inline float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

/* Parameters of the noisy-input kernel: out = (x + sigma * eps) * scale + shift. */
struct NoisyParams {
  float sigma;
  float scale;  /* input affine folded into the kernel (e.g. [0, 1] -> [-1, 1]) */
  float shift;
  bool affine;  /* false when scale == 1 and shift == 0: then out = x + sigma * eps exactly */
};

/* Number of Philox blocks (of four elements) in one sample of `elements` elements. */
CERTSEG_HD inline uint64_t noise_blocks(uint64_t elements) { return (elements + 3u) / 4u; }

/* Body: the normals of block `block` of sample `sample` into row[4*block ...] (row = one sample). */
CERTSEG_HD inline void gaussian_block(uint64_t seed, uint64_t sample, uint64_t block, uint64_t elements,
                                      float* row) {
  float z[4];
  normal4(seed, sample, static_cast<uint32_t>(block), z);
  const uint64_t e0 = 4u * block;
  const uint64_t left = elements - e0;
  const int count = left < 4u ? static_cast<int>(left) : 4;
  for (int i = 0; i < count; ++i) row[e0 + i] = z[i];
}

/* Body: the noisy input of block `block` of sample `sample`: row[e] = x[e] + sigma * eps[e] (then the affine). */
CERTSEG_HD inline void noisy_block(const float* x, uint64_t elements, const NoisyParams& p, uint64_t seed,
                                   uint64_t sample, uint64_t block, float* row) {
  float z[4];
  normal4(seed, sample, static_cast<uint32_t>(block), z);
  const uint64_t e0 = 4u * block;
  const uint64_t left = elements - e0;
  const int count = left < 4u ? static_cast<int>(left) : 4;
  for (int i = 0; i < count; ++i) {
    float v = fadd(x[e0 + i], fmul(p.sigma, z[i]));
    if (p.affine) v = fadd(fmul(v, p.scale), p.shift);
    row[e0 + i] = v;
  }
}

/* Body: the votes of pixel `pixel` over a batch of label maps.
 *
 * labels is uint8 (batch, pixels), counts is int32 (num_classes, pixels); counts[c, pixel] gains the
 * number of b with labels[b, pixel] == c.  A label >= num_classes is never written; the largest such
 * label is returned (-1 when every label is in range).
 */
CERTSEG_HD inline int vote_pixel(const uint8_t* labels, uint64_t batch, uint64_t pixels, uint64_t pixel,
                                 int32_t* counts, int num_classes) {
  int bad = -1;
  for (uint64_t b = 0; b < batch; ++b) {
    const int c = labels[b * pixels + pixel];
    if (c < num_classes) {
      counts[static_cast<uint64_t>(c) * pixels + pixel] += 1;
    } else if (c > bad) {
      bad = c;
    }
  }
  return bad;
}

}  // namespace certseg

#endif  // CERTSEG_KERNELS_H
