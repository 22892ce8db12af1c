/* certseg native runtime: certify an image with an OpenVINO engine directory, without Python.
 *
 * Link against libcertseg_runtime (cpp_ext/runtime, CMake option CERTSEG_BUILD_RUNTIME).
 *
 *   certseg_engine* engine;
 *   if (certseg_engine_open("engines/chest-ov", NULL, &engine) != CERTSEG_OK) {
 *     fprintf(stderr, "%s\n", certseg_runtime_last_error());   // one line naming the problem and the fix
 *     return 1;
 *   }
 *   certseg_certify_options opt;
 *   certseg_certify_options_init(&opt);                         // n0 10, n 100, tau 0.75, alpha 0.001, Holm
 *   char* json = NULL;
 *   int rc = certseg_certify(engine, image, channels, height, width, &opt, labels, NULL, &json);
 *   ...
 *   certseg_string_free(json);
 *   certseg_engine_close(engine);
 *
 * Opening checks the engine directory as the Python runtime does (certseg_rt/manifest.py and the OpenVINO
 * runner): required manifest fields and their types, format_version, every listed file inside the directory
 * and with the recorded SHA-256 before any model file is parsed (the model file is hashed from the very bytes
 * OpenVINO then parses), the OpenVINO release, native bf16 for a bf16 engine.  The model is compiled with the
 * manifest's INFERENCE_PRECISION_HINT (read back from the compiled model), the LATENCY hint and the thread count,
 * at open, for the static batches of the certify calls expected (options n0, n), or imported from the per-user
 * compiled-model cache (options cache_dir), whose entries are checked by key and SHA-256 before use.
 *
 * Certify runs SegCertify: noise (Philox, the same bits as certseg_rt.kernels), the fused graph, votes, then
 * Holm or Bonferroni over pixels; selection samples 0..n0-1, estimation samples n0..n0+n-1 of stream `seed`.
 * Its certificate JSON has the fields of `certseg-rt certify IMAGE --engine DIR --json` except the image's
 * (image, image_sha256, mask), which the caller knows.
 *
 * Every function returns CERTSEG_OK (0) or an error code; certseg_runtime_last_error() gives the one-line
 * message of the last failed call on the calling thread.  No C++ exception crosses this interface.  One engine
 * may be used by one thread at a time; distinct engines are independent.
 */
#ifndef CERTSEG_RUNTIME_H
#define CERTSEG_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "certseg.h" /* return codes, certseg_correction, CERTSEG_ABSTAIN */

#if defined(_WIN32)
#define CERTSEG_RUNTIME_API __declspec(dllexport)
#else
#define CERTSEG_RUNTIME_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Further return codes (certseg.h has 0..5). */
#define CERTSEG_ERR_ENGINE 10 /* the engine directory is unusable: manifest, hashes, versions, model */
#define CERTSEG_ERR_INPUT 11  /* the image does not fit the engine (shape, values) */
#define CERTSEG_ERR_IO 12     /* a file could not be read or written */
#define CERTSEG_ERR_INFER 13  /* OpenVINO failed while running the model */

typedef struct certseg_engine certseg_engine; /* opaque */

/* Message of the last failed call on this thread ("" if none); valid until the next call on the thread. */
CERTSEG_RUNTIME_API const char* certseg_runtime_last_error(void);

/* The certseg-rt release this runtime implements (the Python package's version, e.g. "0.1.0"). */
CERTSEG_RUNTIME_API const char* certseg_runtime_version(void);

typedef struct certseg_open_options {
  int threads;    /* OpenVINO inference threads; 0: the manifest's openvino.threads */
  int batch_size; /* samples per forward pass, inside the manifest's batch_sizes; 0: its opt */
  /* The compiled-model cache, shared with the Python runtime: NULL for $CERTSEG_CACHE_DIR or the platform's
   * per-user cache folder (~/.cache/certseg-rt), "" for none, else a folder.  A folder that cannot be written
   * still serves its entries (certseg_engine_note says so). */
  const char* cache_dir;
  /* The sample counts of the certify calls to prepare for: their static batches are compiled (or imported from
   * the cache) at open, so the first certify compiles nothing.  0: the defaults, 10 and 100. */
  int64_t n0, n;
} certseg_open_options;

CERTSEG_RUNTIME_API void certseg_open_options_init(certseg_open_options* options);

/* Check and open an engine directory (options may be NULL for the defaults).  On failure *engine is NULL. */
CERTSEG_RUNTIME_API int certseg_engine_open(const char* engine_dir, const certseg_open_options* options,
                                            certseg_engine** engine);
/* A remark from opening for the user (e.g. the cache folder could not be written), or "" (owned by the engine). */
CERTSEG_RUNTIME_API const char* certseg_engine_note(const certseg_engine* engine);

/* Release an engine (NULL is allowed). */
CERTSEG_RUNTIME_API void certseg_engine_close(certseg_engine* engine);

/* The image the engine takes: float32 (channels, height, width) in [0, 1].  With a channel-replicating input
 * adapter (manifest field adapter) channels is the image's (e.g. 1) and the model sees more. */
CERTSEG_RUNTIME_API int certseg_engine_image_shape(const certseg_engine* engine, size_t* channels, size_t* height,
                                                   size_t* width);
CERTSEG_RUNTIME_API size_t certseg_engine_num_classes(const certseg_engine* engine);
/* Name of class i (NULL if out of range); owned by the engine. */
CERTSEG_RUNTIME_API const char* certseg_engine_class_name(const certseg_engine* engine, size_t i);
/* The engine's smoothing noise level (manifest field sigma). */
CERTSEG_RUNTIME_API double certseg_engine_sigma(const certseg_engine* engine);

typedef void (*certseg_progress_fn)(int64_t samples_done, int64_t samples_total, void* user);

typedef struct certseg_certify_options {
  int64_t n0;   /* selection samples (>= 1) */
  int64_t n;    /* estimation samples (>= 1) */
  double tau;   /* class-probability threshold, 0.5 < tau < 1; radius = sigma * Phi^-1(tau) */
  double alpha; /* family-wise error over the image's pixels, 0 < alpha < 1 */
  uint64_t seed;
  certseg_correction correction;
  certseg_progress_fn progress; /* called after every batch; may be NULL */
  void* progress_user;
} certseg_certify_options;

/* n0 10, n 100, tau 0.75, alpha 0.001, seed 0, Holm, no progress. */
CERTSEG_RUNTIME_API void certseg_certify_options_init(certseg_certify_options* options);

/* Check options as certseg_certify does (tau, alpha, n0, n, correction), before any engine is opened; the message
 * is the Python runtime's ("invalid tau=1.5: must lie strictly between 0.5 and 1"). */
CERTSEG_RUNTIME_API int certseg_certify_options_check(const certseg_certify_options* options);

/* Certify one image: float32 (channels, height, width), C order, finite, in [0, 1], the engine's image shape.
 *   labels:           uint8 (height * width), the certified class or CERTSEG_ABSTAIN (255); required.
 *   pvalues:          double (height * width), P(Binom(n, tau) >= k) of each pixel's candidate; may be NULL.
 *   certificate_json: receives a JSON object (free it with certseg_string_free); may be NULL.
 * Nothing is written to labels / pvalues / *certificate_json unless the call succeeds. */
CERTSEG_RUNTIME_API int certseg_certify(certseg_engine* engine, const float* image, size_t channels, size_t height,
                                        size_t width, const certseg_certify_options* options, uint8_t* labels,
                                        double* pvalues, char** certificate_json);

CERTSEG_RUNTIME_API void certseg_string_free(char* s);

/* SHA-256 of a file as 64 lowercase hex digits and a NUL into hex (65 chars), as the manifest records them. */
CERTSEG_RUNTIME_API int certseg_sha256_file(const char* path, char hex[65]);

#ifdef __cplusplus
}
#endif

#endif /* CERTSEG_RUNTIME_H */
