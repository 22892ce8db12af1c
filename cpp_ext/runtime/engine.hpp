// An opened engine and SegCertify on it: the sampling loop (kernels -> OpenVINO -> votes), the statistics of the
// kernel library, and the certificate as the Python runtime writes it.
#ifndef CERTSEG_RUNTIME_ENGINE_HPP
#define CERTSEG_RUNTIME_ENGINE_HPP

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "certseg_runtime.h"
#include "manifest.hpp"
#include "openvino_model.hpp"

namespace certseg {
namespace rt {

class Engine {
 public:
  // Opens the engine ready for certify calls of n0 and n samples (their static batches compiled now, or imported
  // from the compiled-model cache at cache_dir: NULL for the default folder, "" for none).
  Engine(const std::string& engine_dir, int threads, int batch_size, const char* cache_dir, int64_t n0, int64_t n);

  const Manifest& manifest() const { return manifest_; }
  const OpenVinoModel& model() const { return *model_; }

  // See certseg_certify in certseg_runtime.h.  Returns the certificate (the Python summary's fields, in its order).
  Json certify(const float* image, std::size_t channels, std::size_t height, std::size_t width,
               const certseg_certify_options& options, uint8_t* labels, double* pvalues);

 private:
  // Votes int32 (num_classes, H, W) of samples offset .. offset + num - 1 of noise stream `seed`.
  void sample_counts(const float* x, int64_t num, uint64_t seed, int64_t offset, int32_t* counts,
                     const certseg_certify_options& options, int64_t done_before, int64_t total);

  // The static batch every sample of a call of `num` samples runs at (runtime/sampling.py's call_batch).
  int64_t call_batch(int64_t num) const;

  Manifest manifest_;
  std::unique_ptr<OpenVinoModel> model_;
  int batch_size_;
  std::vector<float> model_input_;  // the image in the noise space (replicated when the manifest has an adapter)
  std::vector<float> noisy_;        // (batch, C, H, W), reused by every batch and every certify
  std::vector<uint8_t> batch_labels_;
};

// certseg_rt.certify.check_parameters' messages ("invalid tau=1.5: must lie strictly between 0.5 and 1").
void check_certify_options(const certseg_certify_options& options);

}  // namespace rt
}  // namespace certseg

#endif
