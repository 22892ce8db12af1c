// The C API (include/certseg.h): argument checks, then the CPU loops, the CUDA launches or the statistics.
#include "certseg.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "certseg/cpu.hpp"
#include "certseg/cuda.hpp"
#include "certseg/kernels.h"
#include "certseg/philox.h"
#include "certseg/stats.hpp"

namespace {

thread_local std::string g_last_error;

int fail(int code, std::string message) {
  g_last_error = std::move(message);
  return code;
}

int ok() {
  g_last_error.clear();
  return CERTSEG_OK;
}

// A sample's elements are addressed by a 32-bit Philox block index: at most 2^32 blocks of 4.
constexpr uint64_t kMaxElements = uint64_t{1} << 34;

int check_noise_args(uint64_t first_sample, size_t batch, size_t elements, const void* out, const char* out_name) {
  if (elements > kMaxElements) {
    return fail(CERTSEG_ERR_ARGUMENT, "elements per sample must be at most 2^34, got " + std::to_string(elements));
  }
  if (batch > 0 && elements > std::numeric_limits<size_t>::max() / batch) {
    return fail(CERTSEG_ERR_ARGUMENT, "batch * elements overflows size_t");
  }
  if (batch > 0 && first_sample > std::numeric_limits<uint64_t>::max() - (batch - 1)) {
    return fail(CERTSEG_ERR_ARGUMENT, "sample indices first_sample + b must stay below 2^64 (first_sample=" +
                                          std::to_string(first_sample) + ", batch=" + std::to_string(batch) + ")");
  }
  if (out == nullptr && batch * elements > 0) return fail(CERTSEG_ERR_ARGUMENT, std::string(out_name) + " is NULL");
  return CERTSEG_OK;
}

// A packed batch: images * per_image rows of `elements`, the rows' sample indices next .. next + per_image - 1.
int check_packed_args(size_t images, size_t per_image, size_t elements, uint64_t next, const void* out,
                      const char* out_name) {
  if (images > 0 && per_image > std::numeric_limits<size_t>::max() / images) {
    return fail(CERTSEG_ERR_ARGUMENT, "images * per_image overflows size_t");
  }
  const int rc = check_noise_args(0, images * per_image, elements, out, out_name);  // sizes
  if (rc != CERTSEG_OK || images == 0) return rc;
  return check_noise_args(next, per_image, elements, out, out_name);  // the sample indices stay below 2^64
}

certseg::NoisyParams noisy_params(float sigma, float scale, float shift) {
  certseg::NoisyParams p;
  p.sigma = sigma;
  p.scale = scale;
  p.shift = shift;
  p.affine = !(scale == 1.0f && shift == 0.0f);
  return p;
}

int check_vote_args(const void* labels, size_t batch, size_t pixels, const void* counts, size_t num_classes) {
  if (num_classes < 1 || num_classes > 256) {
    return fail(CERTSEG_ERR_ARGUMENT, "num_classes must be in [1, 256], got " + std::to_string(num_classes));
  }
  if (batch > 0 && pixels > std::numeric_limits<size_t>::max() / batch) {
    return fail(CERTSEG_ERR_ARGUMENT, "batch * pixels overflows size_t");
  }
  if (pixels > 0 && num_classes > std::numeric_limits<size_t>::max() / pixels) {
    return fail(CERTSEG_ERR_ARGUMENT, "num_classes * pixels overflows size_t");
  }
  if (labels == nullptr && batch * pixels > 0) return fail(CERTSEG_ERR_ARGUMENT, "labels is NULL");
  if (counts == nullptr && pixels > 0) return fail(CERTSEG_ERR_ARGUMENT, "counts is NULL");
  return CERTSEG_OK;
}

int cuda_result(int code, const char* what) {
  if (code == certseg::cuda::kNoCuda) {
    return fail(CERTSEG_ERR_NO_CUDA, "certseg was built without CUDA (rebuild with -DCERTSEG_CUDA=ON)");
  }
  if (code != 0) {
    return fail(CERTSEG_ERR_CUDA, std::string(what) + ": " + certseg::cuda::error_string(code));
  }
  return ok();
}

}  // namespace

extern "C" {

const char* certseg_last_error(void) { return g_last_error.c_str(); }

void certseg_philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
  const certseg::Words4 r = certseg::philox4x32_10(counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
  for (int i = 0; i < 4; ++i) out[i] = r.w[i];
}

int certseg_set_num_threads(int n) {
  if (n < 0) return fail(CERTSEG_ERR_ARGUMENT, "number of threads must be >= 1 (or 0 for the default), got " +
                                                   std::to_string(n));
  certseg::cpu::set_num_threads(n);
  return ok();
}

int certseg_get_num_threads(void) { return certseg::cpu::get_num_threads(); }

int certseg_gaussian_noise(uint64_t seed, uint64_t first_sample, size_t batch, size_t elements, float* out) {
  const int rc = check_noise_args(first_sample, batch, elements, out, "out");
  if (rc != CERTSEG_OK) return rc;
  certseg::cpu::gaussian_noise(seed, first_sample, batch, elements, out);
  return ok();
}

int certseg_fill_noisy(const float* x, size_t elements, float sigma, uint64_t seed, uint64_t first_sample,
                       size_t batch, float scale, float shift, float* out) {
  const int rc = check_noise_args(first_sample, batch, elements, out, "out");
  if (rc != CERTSEG_OK) return rc;
  if (x == nullptr && elements > 0) return fail(CERTSEG_ERR_ARGUMENT, "x is NULL");
  certseg::cpu::fill_noisy(x, elements, noisy_params(sigma, scale, shift), seed, first_sample, batch, out);
  return ok();
}

int certseg_accumulate_votes(const uint8_t* labels, size_t batch, size_t pixels, int32_t* counts,
                             size_t num_classes) {
  const int rc = check_vote_args(labels, batch, pixels, counts, num_classes);
  if (rc != CERTSEG_OK) return rc;
  const int top = certseg::cpu::max_label(labels, static_cast<uint64_t>(batch) * pixels);
  if (static_cast<size_t>(top) >= num_classes) {
    return fail(CERTSEG_ERR_LABEL, "label " + std::to_string(top) + " out of range for " +
                                       std::to_string(num_classes) +
                                       " classes: the model's output does not match the class count it declares");
  }
  certseg::cpu::accumulate_votes(labels, batch, pixels, counts, static_cast<int>(num_classes));
  return ok();
}

int certseg_fill_noisy_packed(const float* x, size_t images, size_t elements, float sigma, const uint64_t counter[3],
                              size_t per_image, float* out) {
  if (counter == nullptr) return fail(CERTSEG_ERR_ARGUMENT, "counter is NULL");
  const int rc = check_packed_args(images, per_image, elements, counter[certseg::kCounterNext], out, "out");
  if (rc != CERTSEG_OK) return rc;
  if (x == nullptr && images * elements > 0) return fail(CERTSEG_ERR_ARGUMENT, "x is NULL");
  certseg::cpu::fill_noisy_packed(x, images, elements, noisy_params(sigma, 1.0f, 0.0f), counter, per_image, out);
  return ok();
}

int certseg_accumulate_votes_packed(const uint8_t* labels, size_t images, size_t per_image, size_t pixels,
                                    int32_t* counts, size_t num_classes, const uint64_t counter[3]) {
  if (counter == nullptr) return fail(CERTSEG_ERR_ARGUMENT, "counter is NULL");
  if (images > 0 && per_image > std::numeric_limits<size_t>::max() / images) {
    return fail(CERTSEG_ERR_ARGUMENT, "images * per_image overflows size_t");
  }
  int rc = check_vote_args(labels, images * per_image, pixels, counts, num_classes);
  if (rc != CERTSEG_OK) return rc;
  if (images > 0 && num_classes * pixels > std::numeric_limits<size_t>::max() / images) {
    return fail(CERTSEG_ERR_ARGUMENT, "images * num_classes * pixels overflows size_t");
  }
  const uint64_t valid = certseg::valid_rows(counter[certseg::kCounterNext], counter[certseg::kCounterEnd], per_image);
  int top = 0;
  for (size_t i = 0; i < images; ++i) {  // only the rows that vote are checked (padding rows are never read)
    const int t = certseg::cpu::max_label(labels + i * per_image * pixels, valid * pixels);
    top = t > top ? t : top;
  }
  if (static_cast<size_t>(top) >= num_classes) {
    return fail(CERTSEG_ERR_LABEL, "label " + std::to_string(top) + " out of range for " +
                                       std::to_string(num_classes) +
                                       " classes: the model's output does not match the class count it declares");
  }
  certseg::cpu::accumulate_votes_packed(labels, images, per_image, pixels, counts, static_cast<int>(num_classes),
                                        counter);
  return ok();
}

int certseg_binomial_upper_tail(int64_t n, double tau, double* table) {
  if (n < 0) return fail(CERTSEG_ERR_ARGUMENT, "n must be >= 0, got " + std::to_string(n));
  if (!(tau > 0.0 && tau < 1.0)) return fail(CERTSEG_ERR_ARGUMENT, "tau must lie strictly between 0 and 1");
  if (table == nullptr) return fail(CERTSEG_ERR_ARGUMENT, "table is NULL");
  try {
    const std::vector<double> t = certseg::binomial_upper_tail(n, tau);
    for (size_t i = 0; i < t.size(); ++i) table[i] = t[i];
  } catch (const std::bad_alloc&) {
    return fail(CERTSEG_ERR_MEMORY, "out of memory for a table of n + 1 = " + std::to_string(n + 1) + " entries");
  }
  return ok();
}

int certseg_certify_counts(const int32_t* counts0, const int32_t* counts, size_t num_classes, size_t pixels,
                           int64_t n, double tau, double alpha, certseg_correction correction, uint8_t* labels,
                           double* pvalues) {
  if (pixels > 0 && (counts0 == nullptr || counts == nullptr || labels == nullptr)) {
    return fail(CERTSEG_ERR_ARGUMENT, "counts0, counts and labels must not be NULL");
  }
  if (pixels > 0 && num_classes > std::numeric_limits<size_t>::max() / pixels) {
    return fail(CERTSEG_ERR_ARGUMENT, "num_classes * pixels overflows size_t");
  }
  try {
    const std::string err = certseg::certify_counts(counts0, counts, num_classes, pixels, n, tau, alpha,
                                                    static_cast<certseg::Correction>(correction), labels, pvalues);
    if (!err.empty()) return fail(CERTSEG_ERR_ARGUMENT, err);
  } catch (const std::bad_alloc&) {
    return fail(CERTSEG_ERR_MEMORY, "out of memory in certseg_certify_counts");
  }
  return ok();
}

int certseg_certified_radius(double sigma, double tau, double* radius) {
  if (radius == nullptr) return fail(CERTSEG_ERR_ARGUMENT, "radius is NULL");
  if (!(std::isfinite(sigma) && sigma > 0.0)) return fail(CERTSEG_ERR_ARGUMENT, "sigma must be a finite number > 0");
  if (!(tau > 0.5 && tau < 1.0)) return fail(CERTSEG_ERR_ARGUMENT, "tau must lie strictly between 0.5 and 1");
  *radius = sigma * certseg::normal_ppf(tau);
  return ok();
}

int certseg_cuda_compiled(void) { return certseg::cuda::compiled() ? 1 : 0; }

int certseg_cuda_device_count(void) { return certseg::cuda::device_count(); }

int certseg_cuda_gaussian_noise(uint64_t seed, uint64_t first_sample, size_t batch, size_t elements, float* d_out,
                                void* stream) {
  const int rc = check_noise_args(first_sample, batch, elements, d_out, "d_out");
  if (rc != CERTSEG_OK) return rc;
  return cuda_result(certseg::cuda::gaussian_noise(seed, first_sample, batch, elements, d_out, stream),
                     "gaussian noise kernel launch");
}

int certseg_cuda_fill_noisy(const float* d_x, size_t elements, float sigma, uint64_t seed, uint64_t first_sample,
                            size_t batch, float scale, float shift, float* d_out, void* stream) {
  const int rc = check_noise_args(first_sample, batch, elements, d_out, "d_out");
  if (rc != CERTSEG_OK) return rc;
  if (d_x == nullptr && elements > 0) return fail(CERTSEG_ERR_ARGUMENT, "d_x is NULL");
  return cuda_result(certseg::cuda::fill_noisy(d_x, elements, noisy_params(sigma, scale, shift), seed, first_sample,
                                               batch, d_out, stream),
                     "noisy input kernel launch");
}

int certseg_cuda_accumulate_votes(const uint8_t* d_labels, size_t batch, size_t pixels, int32_t* d_counts,
                                  size_t num_classes, int32_t* d_bad_label, void* stream) {
  const int rc = check_vote_args(d_labels, batch, pixels, d_counts, num_classes);
  if (rc != CERTSEG_OK) return rc;
  return cuda_result(certseg::cuda::accumulate_votes(d_labels, batch, pixels, d_counts, static_cast<int>(num_classes),
                                                     d_bad_label, stream),
                     "vote kernel launch");
}

int certseg_cuda_fill_noisy_packed(const float* d_x, size_t images, size_t elements, float sigma,
                                   const uint64_t* d_counter, size_t per_image, float* d_out, void* stream) {
  if (d_counter == nullptr) return fail(CERTSEG_ERR_ARGUMENT, "d_counter is NULL");
  const int rc = check_packed_args(images, per_image, elements, 0, d_out, "d_out");
  if (rc != CERTSEG_OK) return rc;
  if (d_x == nullptr && images * elements > 0) return fail(CERTSEG_ERR_ARGUMENT, "d_x is NULL");
  return cuda_result(certseg::cuda::fill_noisy_packed(d_x, images, elements, noisy_params(sigma, 1.0f, 0.0f), d_counter,
                                                      per_image, d_out, stream),
                     "packed noisy input kernel launch");
}

int certseg_cuda_accumulate_votes_packed(const uint8_t* d_labels, size_t images, size_t per_image, size_t pixels,
                                         int32_t* d_counts, size_t num_classes, int32_t* d_bad_label,
                                         const uint64_t* d_counter, void* stream) {
  if (d_counter == nullptr) return fail(CERTSEG_ERR_ARGUMENT, "d_counter is NULL");
  if (images > 0 && per_image > std::numeric_limits<size_t>::max() / images) {
    return fail(CERTSEG_ERR_ARGUMENT, "images * per_image overflows size_t");
  }
  const int rc = check_vote_args(d_labels, images * per_image, pixels, d_counts, num_classes);
  if (rc != CERTSEG_OK) return rc;
  return cuda_result(certseg::cuda::accumulate_votes_packed(d_labels, images, per_image, pixels, d_counts,
                                                            static_cast<int>(num_classes), d_bad_label, d_counter,
                                                            stream),
                     "packed vote kernel launch");
}

int certseg_cuda_advance_counter(uint64_t* d_counter, size_t samples, void* stream) {
  if (d_counter == nullptr) return fail(CERTSEG_ERR_ARGUMENT, "d_counter is NULL");
  return cuda_result(certseg::cuda::advance_counter(d_counter, samples, stream), "counter kernel launch");
}

}  // extern "C"
