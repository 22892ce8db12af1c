// CUDA grid-stride kernels over the bodies of certseg/kernels.h, and their host launch functions.
// Nothing here runs at import or load time: the CUDA runtime (linked statically) is first touched by a
// launch or by device_count().
#include <cuda_runtime.h>

#include <cstdint>

#include "certseg/cuda.hpp"
#include "certseg/kernels.h"

namespace certseg {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr uint64_t kMaxGrid = 32768;  // grid-stride loops cover the rest

unsigned grid_for(uint64_t units) {
  const uint64_t g = (units + kThreads - 1) / kThreads;
  return static_cast<unsigned>(g < kMaxGrid ? g : kMaxGrid);
}

__device__ inline uint64_t first_unit() { return blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; }
__device__ inline uint64_t unit_stride() { return static_cast<uint64_t>(gridDim.x) * blockDim.x; }

// One unit = one Philox block (4 elements) of one sample.
__global__ void gaussian_kernel(uint64_t seed, uint64_t first_sample, uint64_t batch, uint64_t elements,
                                float* out) {
  const uint64_t blocks = noise_blocks(elements);
  const uint64_t units = batch * blocks;
  for (uint64_t i = first_unit(); i < units; i += unit_stride()) {
    const uint64_t b = i / blocks;
    gaussian_block(seed, first_sample + b, i - b * blocks, elements, out + b * elements);
  }
}

__global__ void noisy_kernel(const float* x, uint64_t elements, NoisyParams params, uint64_t seed,
                             uint64_t first_sample, uint64_t batch, float* out) {
  const uint64_t blocks = noise_blocks(elements);
  const uint64_t units = batch * blocks;
  for (uint64_t i = first_unit(); i < units; i += unit_stride()) {
    const uint64_t b = i / blocks;
    noisy_block(x, elements, params, seed, first_sample + b, i - b * blocks, out + b * elements);
  }
}

// One thread per pixel, looping over the batch: no atomics on the counts.
__global__ void votes_kernel(const uint8_t* labels, uint64_t batch, uint64_t pixels, int32_t* counts,
                             int num_classes, int32_t* bad_label) {
  for (uint64_t p = first_unit(); p < pixels; p += unit_stride()) {
    const int bad = vote_pixel(labels, batch, pixels, p, counts, num_classes);
    if (bad >= 0 && bad_label != nullptr) atomicMax(bad_label, bad);  // only on the error path
  }
}

// Packed batches: the counter is read from device memory when the kernel runs (a replayed graph sees its update).
__global__ void packed_noisy_kernel(const float* x, uint64_t elements, NoisyParams params, const uint64_t* counter,
                                    uint64_t per_image, uint64_t units, float* out) {
  const uint64_t seed = counter[kCounterSeed], next = counter[kCounterNext];
  for (uint64_t i = first_unit(); i < units; i += unit_stride()) {
    packed_noisy_unit(x, elements, params, seed, next, per_image, i, out);
  }
}

__global__ void packed_votes_kernel(const uint8_t* labels, uint64_t per_image, uint64_t pixels, uint64_t units,
                                    const uint64_t* counter, int32_t* counts, int num_classes, int32_t* bad_label) {
  const uint64_t valid = valid_rows(counter[kCounterNext], counter[kCounterEnd], per_image);
  for (uint64_t u = first_unit(); u < units; u += unit_stride()) {
    const int bad = packed_vote_unit(labels, per_image, valid, pixels, u, counts, num_classes);
    if (bad >= 0 && bad_label != nullptr) atomicMax(bad_label, bad);
  }
}

__global__ void advance_kernel(uint64_t* counter, uint64_t samples) {
  if (blockIdx.x == 0 && threadIdx.x == 0) counter[kCounterNext] += samples;
}

}  // namespace

bool compiled() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error of "no driver" / "no device"
    return 0;
  }
  return n;
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

int gaussian_noise(uint64_t seed, uint64_t first_sample, uint64_t batch, uint64_t elements, float* d_out,
                   void* stream) {
  const uint64_t units = batch * noise_blocks(elements);
  if (units == 0) return 0;
  gaussian_kernel<<<grid_for(units), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(seed, first_sample, batch,
                                                                                       elements, d_out);
  return static_cast<int>(cudaGetLastError());
}

int fill_noisy(const float* d_x, uint64_t elements, const NoisyParams& params, uint64_t seed, uint64_t first_sample,
               uint64_t batch, float* d_out, void* stream) {
  const uint64_t units = batch * noise_blocks(elements);
  if (units == 0) return 0;
  noisy_kernel<<<grid_for(units), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(d_x, elements, params, seed,
                                                                                    first_sample, batch, d_out);
  return static_cast<int>(cudaGetLastError());
}

int accumulate_votes(const uint8_t* d_labels, uint64_t batch, uint64_t pixels, int32_t* d_counts, int num_classes,
                     int32_t* d_bad_label, void* stream) {
  if (pixels == 0 || batch == 0) return 0;
  votes_kernel<<<grid_for(pixels), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(d_labels, batch, pixels, d_counts,
                                                                                     num_classes, d_bad_label);
  return static_cast<int>(cudaGetLastError());
}

int fill_noisy_packed(const float* d_x, uint64_t images, uint64_t elements, const NoisyParams& params,
                      const uint64_t* d_counter, uint64_t per_image, float* d_out, void* stream) {
  const uint64_t units = images * per_image * noise_blocks(elements);
  if (units == 0) return 0;
  packed_noisy_kernel<<<grid_for(units), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      d_x, elements, params, d_counter, per_image, units, d_out);
  return static_cast<int>(cudaGetLastError());
}

int accumulate_votes_packed(const uint8_t* d_labels, uint64_t images, uint64_t per_image, uint64_t pixels,
                            int32_t* d_counts, int num_classes, int32_t* d_bad_label, const uint64_t* d_counter,
                            void* stream) {
  const uint64_t units = images * pixels;
  if (units == 0 || per_image == 0) return 0;
  packed_votes_kernel<<<grid_for(units), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      d_labels, per_image, pixels, units, d_counter, d_counts, num_classes, d_bad_label);
  return static_cast<int>(cudaGetLastError());
}

int advance_counter(uint64_t* d_counter, uint64_t samples, void* stream) {
  advance_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(d_counter, samples);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace certseg
