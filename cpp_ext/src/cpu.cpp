// CPU loops: enumerate the units of work and call the bodies of certseg/kernels.h (OpenMP if available).
#include "certseg/cpu.hpp"

#include <atomic>
#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace certseg {
namespace cpu {
namespace {

std::atomic<int> g_threads{0};  // 0: the OpenMP default

// Below this many units a loop runs on the calling thread (the fork costs more than the work).
constexpr int64_t kParallelMin = 2048;

}  // namespace

bool openmp_enabled() {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

void set_num_threads(int n) { g_threads.store(n < 0 ? 0 : n); }

int get_num_threads() {
#if defined(_OPENMP)
  const int n = g_threads.load();
  return n > 0 ? n : omp_get_max_threads();
#else
  return 1;
#endif
}

void gaussian_noise(uint64_t seed, uint64_t first_sample, uint64_t batch, uint64_t elements, float* out) {
  const int64_t blocks = static_cast<int64_t>(noise_blocks(elements));
  const int64_t rows = static_cast<int64_t>(batch);
  const int threads = get_num_threads();
  (void)threads;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (rows * blocks >= kParallelMin)
  for (int64_t b = 0; b < rows; ++b) {
    for (int64_t k = 0; k < blocks; ++k) {
      gaussian_block(seed, first_sample + static_cast<uint64_t>(b), static_cast<uint64_t>(k), elements,
                     out + static_cast<uint64_t>(b) * elements);
    }
  }
}

void fill_noisy(const float* x, uint64_t elements, const NoisyParams& params, uint64_t seed, uint64_t first_sample,
                uint64_t batch, float* out) {
  const int64_t blocks = static_cast<int64_t>(noise_blocks(elements));
  const int64_t rows = static_cast<int64_t>(batch);
  const int threads = get_num_threads();
  (void)threads;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (rows * blocks >= kParallelMin)
  for (int64_t b = 0; b < rows; ++b) {
    for (int64_t k = 0; k < blocks; ++k) {
      noisy_block(x, elements, params, seed, first_sample + static_cast<uint64_t>(b), static_cast<uint64_t>(k),
                  out + static_cast<uint64_t>(b) * elements);
    }
  }
}

int max_label(const uint8_t* labels, uint64_t n) {
  const int64_t count = static_cast<int64_t>(n);
  const int threads = get_num_threads();
  (void)threads;
  unsigned top = 0;
#pragma omp parallel for reduction(max : top) schedule(static) num_threads(threads) if (count >= 64 * kParallelMin)
  for (int64_t i = 0; i < count; ++i) {
    const unsigned v = labels[i];
    top = v > top ? v : top;
  }
  return static_cast<int>(top);
}

void accumulate_votes(const uint8_t* labels, uint64_t batch, uint64_t pixels, int32_t* counts, int num_classes) {
  const int64_t count = static_cast<int64_t>(pixels);
  const int threads = get_num_threads();
  (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (count * static_cast<int64_t>(batch) >= 16 * kParallelMin)
  for (int64_t p = 0; p < count; ++p) {
    vote_pixel(labels, batch, pixels, static_cast<uint64_t>(p), counts, num_classes);
  }
}

void fill_noisy_packed(const float* x, uint64_t images, uint64_t elements, const NoisyParams& params,
                       const uint64_t counter[3], uint64_t per_image, float* out) {
  const uint64_t seed = counter[kCounterSeed], next = counter[kCounterNext];
  const int64_t units = static_cast<int64_t>(images * per_image * noise_blocks(elements));
  const int threads = get_num_threads();
  (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (units >= kParallelMin)
  for (int64_t u = 0; u < units; ++u) {
    packed_noisy_unit(x, elements, params, seed, next, per_image, static_cast<uint64_t>(u), out);
  }
}

void accumulate_votes_packed(const uint8_t* labels, uint64_t images, uint64_t per_image, uint64_t pixels,
                             int32_t* counts, int num_classes, const uint64_t counter[3]) {
  const uint64_t valid = valid_rows(counter[kCounterNext], counter[kCounterEnd], per_image);
  const int64_t units = static_cast<int64_t>(images * pixels);
  const int threads = get_num_threads();
  (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (units * static_cast<int64_t>(valid) >= 16 * kParallelMin)
  for (int64_t u = 0; u < units; ++u) {
    packed_vote_unit(labels, per_image, valid, pixels, static_cast<uint64_t>(u), counts, num_classes);
  }
}

}  // namespace cpu
}  // namespace certseg
