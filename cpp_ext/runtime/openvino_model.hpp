// The fused graph x_noisy (B, C, H, W) float32 -> labels (B, H, W) uint8, compiled once by OpenVINO's CPU plugin.
// The only part of the runtime that includes OpenVINO.
#ifndef CERTSEG_RUNTIME_OPENVINO_MODEL_HPP
#define CERTSEG_RUNTIME_OPENVINO_MODEL_HPP

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "manifest.hpp"

namespace certseg {
namespace rt {

class OpenVinoModel {
 public:
  // Checks the OpenVINO release and the CPU's bf16 support, parses the hashed bytes of the fused IR and checks its
  // input and output against the manifest, then compiles it for each static batch of `batches` (the calls the
  // engine expects; the last two are kept) with the manifest's INFERENCE_PRECISION_HINT (read back: a refusal if
  // the plugin chose another), the LATENCY hint, one stream and `threads` inference threads: the properties
  // runtime/backends/openvino.py compiles with.  With a cache root (model_cache.hpp; "" for none) a compile is
  // imported from the entry for exactly it when there is one, and stored otherwise.  Throws
  // Error(CERTSEG_ERR_ENGINE) with one line.
  OpenVinoModel(Manifest& manifest, int threads, const std::vector<int64_t>& batches, const std::string& cache_root);
  ~OpenVinoModel();
  OpenVinoModel(const OpenVinoModel&) = delete;
  OpenVinoModel& operator=(const OpenVinoModel&) = delete;

  // labels (batch, H, W) of noisy (batch, C, H, W) with the model compiled for exactly `batch` samples (compiled
  // on first use; the two used last are kept, as in Python); both buffers are the caller's and are used in place
  // (OpenVINO tensors over them: nothing is copied).  Throws Error(CERTSEG_ERR_INFER).
  void infer(float* noisy, std::size_t batch, uint8_t* labels);

  std::string version() const;             // the OpenVINO build running here
  std::string inference_precision() const; // read back from the compiled model ("f32", "bf16")
  int threads() const;                     // read back from the compiled model
  // Remarks for the user from opening (e.g. the cache folder could not be written), one line each.
  const std::vector<std::string>& notes() const;
  // This engine's compiled-model cache lookups (hits imported, misses compiled, rejected entries recompiled).
  int cache_hits() const;
  int cache_misses() const;
  int cache_rejected() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rt
}  // namespace certseg

#endif
