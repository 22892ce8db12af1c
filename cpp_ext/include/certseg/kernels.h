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

/* ---- Packed batches with the noise counter in memory ------------------------------------------------------
 *
 * A device loop (the torch-cuda fused form) captures one batch as a CUDA graph and replays it; the arguments
 * that change between replays cannot be kernel arguments, so they live in a counter in memory, uint64[3]:
 *   counter[0] = seed, counter[1] = next (the sample index of every image's first row in this batch),
 *   counter[2] = end (the call's last sample index + 1).
 * The batch packs `images` images of `per_image` consecutive rows each: row r is sample next + r % per_image
 * of image r / per_image, so every image keeps its own noise stream (seed, sample index) exactly as if it were
 * sampled alone.  Rows whose sample index is >= end are the padding of a call's last batch: their noise is
 * drawn, their votes are not counted.  After a batch a one-thread kernel adds per_image to next. */
enum { kCounterSeed = 0, kCounterNext = 1, kCounterEnd = 2, kCounterWords = 3 };

/* How many of an image's rows hold samples of the call (the rest are padding). */
CERTSEG_HD inline uint64_t valid_rows(uint64_t next, uint64_t end, uint64_t per_image) {
  if (next >= end) return 0;
  const uint64_t left = end - next;
  return left < per_image ? left : per_image;
}

/* Body: unit `unit` of a packed noisy batch (units = images * per_image * noise_blocks(elements)); x holds the
 * images one after another (images * elements), out the rows (images * per_image * elements). */
CERTSEG_HD inline void packed_noisy_unit(const float* x, uint64_t elements, const NoisyParams& p, uint64_t seed,
                                         uint64_t next, uint64_t per_image, uint64_t unit, float* out) {
  const uint64_t blocks = noise_blocks(elements);
  const uint64_t row = unit / blocks;
  noisy_block(x + (row / per_image) * elements, elements, p, seed, next + row % per_image, unit - row * blocks,
              out + row * elements);
}

/* Body: unit `unit` = image * pixels + pixel of a packed vote: the first `valid` rows of that image's per_image
 * rows vote into that image's counts (images * num_classes * pixels).  Returns vote_pixel's out-of-range label. */
CERTSEG_HD inline int packed_vote_unit(const uint8_t* labels, uint64_t per_image, uint64_t valid, uint64_t pixels,
                                       uint64_t unit, int32_t* counts, int num_classes) {
  const uint64_t image = unit / pixels;
  return vote_pixel(labels + image * per_image * pixels, valid, pixels, unit - image * pixels,
                    counts + image * static_cast<uint64_t>(num_classes) * pixels, num_classes);
}

}  // namespace certseg

#endif  // CERTSEG_KERNELS_H
