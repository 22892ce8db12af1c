/* CPU loops (OpenMP) over the bodies of certseg/kernels.h.  No argument checking here: the C API
 * (src/capi.cpp) validates and then calls these. */
#ifndef CERTSEG_CPU_HPP
#define CERTSEG_CPU_HPP

#include <cstddef>
#include <cstdint>

#include "certseg/kernels.h"

namespace certseg {
namespace cpu {

bool openmp_enabled();
/* n >= 1 threads for the loops below, or 0 for the default (omp_get_max_threads()). */
void set_num_threads(int n);
int get_num_threads();

void gaussian_noise(uint64_t seed, uint64_t first_sample, uint64_t batch, uint64_t elements, float* out);
void fill_noisy(const float* x, uint64_t elements, const NoisyParams& params, uint64_t seed, uint64_t first_sample,
                uint64_t batch, float* out);
/* Largest value in labels[0 .. n). */
int max_label(const uint8_t* labels, uint64_t n);
/* Assumes every label < num_classes (checked with max_label first). */
void accumulate_votes(const uint8_t* labels, uint64_t batch, uint64_t pixels, int32_t* counts, int num_classes);
/* Packed batches (kernels.h): counter = {seed, next, end}; labels assumed in range (checked first). */
void fill_noisy_packed(const float* x, uint64_t images, uint64_t elements, const NoisyParams& params,
                       const uint64_t counter[3], uint64_t per_image, float* out);
void accumulate_votes_packed(const uint8_t* labels, uint64_t images, uint64_t per_image, uint64_t pixels,
                             int32_t* counts, int num_classes, const uint64_t counter[3]);

}  // namespace cpu
}  // namespace certseg

#endif
