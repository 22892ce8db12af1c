/* certseg C API: the sampling loop's kernels and the certify step, without Python.
 *
 * Link against libcertseg (static: certseg_static, shared: certseg).  All functions are
 * thread-safe; each returns CERTSEG_OK (0) or an error code, and certseg_last_error() gives a
 * message for the last failed call on the calling thread.
 *
 * Noise contract (the same numbers as certseg_rt.kernels, the numpy reference): Philox4x32-10
 * with key (seed & 0xFFFFFFFF, seed >> 32); element e of sample s uses counter
 * (e / 4, s & 0xFFFFFFFF, s >> 32, 0); u_i = (r_i + 0.5) 2^-32; Box-Muller in double; element e
 * takes z[e % 4] rounded to float.  Noisy input: out = x + sigma * eps in float32 without FMA,
 * then optionally * scale + shift.
 */
#ifndef CERTSEG_H
#define CERTSEG_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#if defined(CERTSEG_BUILDING_SHARED)
#define CERTSEG_API __declspec(dllexport)
#elif defined(CERTSEG_USING_SHARED)
#define CERTSEG_API __declspec(dllimport)
#else
#define CERTSEG_API
#endif
#else
#define CERTSEG_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. */
#define CERTSEG_OK 0
#define CERTSEG_ERR_ARGUMENT 1   /* a bad argument: null pointer, size, parameter out of range */
#define CERTSEG_ERR_LABEL 2      /* a label >= num_classes in accumulate_votes */
#define CERTSEG_ERR_MEMORY 3     /* allocation failed */
#define CERTSEG_ERR_NO_CUDA 4    /* the library was built without CUDA */
#define CERTSEG_ERR_CUDA 5       /* a CUDA runtime call failed (message has cudaGetErrorString) */

/* The label of an abstained pixel in certseg_certify_counts. */
#define CERTSEG_ABSTAIN 255

typedef enum certseg_correction {
  CERTSEG_HOLM = 0,       /* Holm's step-down procedure over all pixels */
  CERTSEG_BONFERRONI = 1  /* reject where p <= alpha / pixels */
} certseg_correction;

/* Message of the last failed call on this thread ("" if none); valid until the next call. */
CERTSEG_API const char* certseg_last_error(void);

/* Philox4x32-10 of one counter (4 words) under one key (2 words) into out (4 words). */
CERTSEG_API void certseg_philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

/* Threads of the CPU loops (OpenMP): n >= 1, or 0 for the default (OMP_NUM_THREADS / all cores). */
CERTSEG_API int certseg_set_num_threads(int n);
CERTSEG_API int certseg_get_num_threads(void);

/* Standard normals eps of samples first_sample .. first_sample + batch - 1 into out, float (batch, elements). */
CERTSEG_API int certseg_gaussian_noise(uint64_t seed, uint64_t first_sample, size_t batch, size_t elements,
                                       float* out);

/* out[b, e] = (x[e] + sigma * eps(seed, first_sample + b)[e]) * scale + shift, out float (batch, elements).
 * With scale == 1 and shift == 0 the affine is skipped: out = x + sigma * eps exactly. */
CERTSEG_API int certseg_fill_noisy(const float* x, size_t elements, float sigma, uint64_t seed,
                                   uint64_t first_sample, size_t batch, float scale, float shift, float* out);

/* counts[c, p] += #{b : labels[b, p] == c}; labels uint8 (batch, pixels), counts int32 (num_classes, pixels).
 * A label >= num_classes gives CERTSEG_ERR_LABEL (the message names it) and leaves counts unchanged. */
CERTSEG_API int certseg_accumulate_votes(const uint8_t* labels, size_t batch, size_t pixels, int32_t* counts,
                                         size_t num_classes);

/* Packed batches with the noise counter in memory (what a replayed CUDA graph reads; include/certseg/kernels.h).
 * counter = {seed, next, end}; x float (images, elements); out float (images * per_image, elements): row r is
 * x[r / per_image] + sigma * eps(seed, next + r % per_image), so each image has its own noise stream exactly as
 * when sampled alone.  Votes: the first min(per_image, end - next) rows of each image (the rest are padding)
 * into counts int32 (images, num_classes, pixels); a label >= num_classes among them gives CERTSEG_ERR_LABEL and
 * leaves counts unchanged.  The counter is only read (certseg_cuda_advance_counter moves it on the device). */
CERTSEG_API int certseg_fill_noisy_packed(const float* x, size_t images, size_t elements, float sigma,
                                          const uint64_t counter[3], size_t per_image, float* out);
CERTSEG_API int certseg_accumulate_votes_packed(const uint8_t* labels, size_t images, size_t per_image,
                                                size_t pixels, int32_t* counts, size_t num_classes,
                                                const uint64_t counter[3]);

/* P(Binom(n, tau) >= k) for k = 0..n into table (n + 1 doubles). */
CERTSEG_API int certseg_binomial_upper_tail(int64_t n, double tau, double* table);

/* The certify step from vote counts (SegCertify):
 *   candidate[p] = argmax_c counts0[c, p] (ties to the lowest class), k[p] = counts[candidate[p], p],
 *   pvalues[p]   = P(Binom(n, tau) >= k[p]),
 *   labels[p]    = candidate[p] where the corrected test at family-wise level alpha rejects, else 255.
 * counts0 and counts are int32 (num_classes, pixels), non-negative; every pixel of counts must sum to n and
 * every pixel of counts0 to the same total.  1 <= num_classes <= 255, 0 < tau < 1, 0 < alpha < 1, n >= 1.
 * labels: uint8 (pixels); pvalues: double (pixels), may be NULL. */
CERTSEG_API int certseg_certify_counts(const int32_t* counts0, const int32_t* counts, size_t num_classes,
                                       size_t pixels, int64_t n, double tau, double alpha,
                                       certseg_correction correction, uint8_t* labels, double* pvalues);

/* The certified L2 radius sigma * Phi^-1(tau) into *radius, bit for bit as certseg_rt.stats.certified_radius
 * (scipy's ndtri): sigma > 0 finite, 0.5 < tau < 1 (the range certify takes). */
CERTSEG_API int certseg_certified_radius(double sigma, double tau, double* radius);

/* ---- CUDA (device pointers; stream is a cudaStream_t, NULL for the default stream) ----------------
 * Kernels are launched asynchronously on the stream; a return of CERTSEG_OK means the launch succeeded.
 * Without CUDA support every function returns CERTSEG_ERR_NO_CUDA. */

/* 1 if the library was compiled with CUDA kernels, else 0.  Never touches the CUDA runtime. */
CERTSEG_API int certseg_cuda_compiled(void);

/* Number of usable CUDA devices (0 without CUDA, a driver or a GPU). */
CERTSEG_API int certseg_cuda_device_count(void);

CERTSEG_API int certseg_cuda_gaussian_noise(uint64_t seed, uint64_t first_sample, size_t batch, size_t elements,
                                            float* d_out, void* stream);

CERTSEG_API int certseg_cuda_fill_noisy(const float* d_x, size_t elements, float sigma, uint64_t seed,
                                        uint64_t first_sample, size_t batch, float scale, float shift,
                                        float* d_out, void* stream);

/* d_bad_label (may be NULL): an int32 on the device that the caller sets to -1 beforehand (for example
 * cudaMemsetAsync(p, 0xFF, 4, stream)); after the stream has run it holds the largest label >= num_classes
 * seen, or still -1.  Out-of-range labels are never written, but in-range votes of the batch are counted. */
CERTSEG_API int certseg_cuda_accumulate_votes(const uint8_t* d_labels, size_t batch, size_t pixels,
                                              int32_t* d_counts, size_t num_classes, int32_t* d_bad_label,
                                              void* stream);

/* The packed forms on the device (see certseg_fill_noisy_packed): d_counter is uint64[3] in device memory, read
 * when the kernel runs, so a captured graph of these launches draws the next samples on every replay once
 * certseg_cuda_advance_counter (captured after them) has moved d_counter[1] on by per_image.  The caller keeps
 * next + per_image - 1 below 2^64 (the host forms check it; the device cannot). */
CERTSEG_API int certseg_cuda_fill_noisy_packed(const float* d_x, size_t images, size_t elements, float sigma,
                                               const uint64_t* d_counter, size_t per_image, float* d_out,
                                               void* stream);
CERTSEG_API int certseg_cuda_accumulate_votes_packed(const uint8_t* d_labels, size_t images, size_t per_image,
                                                     size_t pixels, int32_t* d_counts, size_t num_classes,
                                                     int32_t* d_bad_label, const uint64_t* d_counter, void* stream);
/* d_counter[1] += samples, by one thread on the stream. */
CERTSEG_API int certseg_cuda_advance_counter(uint64_t* d_counter, size_t samples, void* stream);

#ifdef __cplusplus
}
#endif

#endif  // CERTSEG_H
