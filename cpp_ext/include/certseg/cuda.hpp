/* Host launch functions of the CUDA kernels (src/cuda.cu): device pointers, a cudaStream_t passed as
 * void* (so this header needs no CUDA include), asynchronous, returning a cudaError_t as int (0 = success).
 * Built without CUDA (src/cuda_stub.cpp), compiled() is false and every launch returns kNoCuda. */
#ifndef CERTSEG_CUDA_HPP
#define CERTSEG_CUDA_HPP

#include <cstddef>
#include <cstdint>

#include "certseg/kernels.h"

namespace certseg {
namespace cuda {

constexpr int kNoCuda = -1;

bool compiled();
/* Usable devices; 0 when there is no driver or GPU (never throws). */
int device_count();
const char* error_string(int code);

int gaussian_noise(uint64_t seed, uint64_t first_sample, uint64_t batch, uint64_t elements, float* d_out,
                   void* stream);
int fill_noisy(const float* d_x, uint64_t elements, const NoisyParams& params, uint64_t seed, uint64_t first_sample,
               uint64_t batch, float* d_out, void* stream);
int accumulate_votes(const uint8_t* d_labels, uint64_t batch, uint64_t pixels, int32_t* d_counts, int num_classes,
                     int32_t* d_bad_label, void* stream);
/* Packed batches with the counter {seed, next, end} in device memory (kernels.h), read when the kernel runs. */
int fill_noisy_packed(const float* d_x, uint64_t images, uint64_t elements, const NoisyParams& params,
                      const uint64_t* d_counter, uint64_t per_image, float* d_out, void* stream);
int accumulate_votes_packed(const uint8_t* d_labels, uint64_t images, uint64_t per_image, uint64_t pixels,
                            int32_t* d_counts, int num_classes, int32_t* d_bad_label, const uint64_t* d_counter,
                            void* stream);
/* d_counter[next] += samples (one thread): the step between two replays of a batch. */
int advance_counter(uint64_t* d_counter, uint64_t samples, void* stream);

}  // namespace cuda
}  // namespace certseg

#endif
