// SegCertify with an OpenVINO engine (certseg_rt/certify.py's certify, runtime/sampling.py's loop):
//   counts0 <- votes of samples 0 .. n0-1        selection
//   counts  <- votes of samples n0 .. n0+n-1     estimation, fresh draws of the same stream
//   labels  <- certseg_certify_counts(counts0, counts, n, tau, alpha, correction)
//   radius  <- sigma * Phi^-1(tau)
// Noise, votes and statistics are the kernel library's (certseg.h), so they are the Python runtime's numbers.
#include "engine.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "certseg.h"
#include "common.hpp"
#include "model_cache.hpp"

namespace certseg {
namespace rt {

namespace {

constexpr int64_t kMaxSamples = 2147483647;          // votes are counted in int32 (certify.MAX_SAMPLES)
constexpr std::size_t kMaxPixels = 4096u * 4096u;    // io.MAX_PIXELS

// A kernel-library call that failed: its code and message.
void check(int rc) {
  if (rc != CERTSEG_OK) fail(rc, certseg_last_error());
}

std::string format_g3(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

std::string shape_tuple(std::size_t c, std::size_t h, std::size_t w) {
  return "(" + std::to_string(c) + ", " + std::to_string(h) + ", " + std::to_string(w) + ")";
}

}  // namespace

void check_certify_options(const certseg_certify_options& o) {
  auto bad = [](const std::string& name, const std::string& value, const std::string& rule) {
    fail(CERTSEG_ERR_ARGUMENT, "invalid " + name + "=" + value + ": " + rule);
  };
  if (!(0.5 < o.tau && o.tau < 1)) bad("tau", py_float(o.tau), "must lie strictly between 0.5 and 1");
  if (!(0 < o.alpha && o.alpha < 1)) bad("alpha", py_float(o.alpha), "must lie strictly between 0 and 1");
  const std::string range = "must be an integer in [1, " + std::to_string(kMaxSamples) + "] (votes are counted in int32)";
  if (!(1 <= o.n0 && o.n0 <= kMaxSamples)) bad("n0", std::to_string(o.n0), range);
  if (!(1 <= o.n && o.n <= kMaxSamples)) bad("n", std::to_string(o.n), range);
  if (o.correction != CERTSEG_HOLM && o.correction != CERTSEG_BONFERRONI) {
    bad("correction", std::to_string(static_cast<int>(o.correction)), "must be one of holm, bonferroni");
  }
}

Engine::Engine(const std::string& engine_dir, int threads, int batch_size, const char* cache_dir, int64_t n0, int64_t n)
    : manifest_(load_manifest(engine_dir)) {
  const Manifest& m = manifest_;
  if (threads < 0) fail(CERTSEG_ERR_ARGUMENT, "threads must be >= 1 (or 0 for the engine's), got " + std::to_string(threads));
  const int64_t batch = batch_size > 0 ? batch_size : m.batch_opt;
  if (batch_size < 0 || batch < m.batch_min || batch > m.batch_max || batch > (1 << 20)) {
    fail(CERTSEG_ERR_ARGUMENT, "batch size " + std::to_string(batch) + " is outside the engine's range " +
                                   std::to_string(m.batch_min) + ".." + std::to_string(m.batch_max));
  }
  batch_size_ = static_cast<int>(batch);
  const std::vector<int64_t> batches = {call_batch(n0 > 0 ? n0 : 10), call_batch(n > 0 ? n : 100)};
  model_.reset(new OpenVinoModel(manifest_, threads > 0 ? threads : static_cast<int>(m.threads), batches,
                                 cache_root(cache_dir)));
  // Noise and votes are a few percent of a batch; between inference calls a second OpenMP team would only spin
  // against OpenVINO's own threads (the Python runtime makes the same choice in runtime/sampling.py).
  certseg_set_num_threads(1);
  const std::size_t elements = m.channels * m.height * m.width;
  model_input_.resize(elements);
  noisy_.resize(static_cast<std::size_t>(batch_size_) * elements);
  batch_labels_.resize(static_cast<std::size_t>(batch_size_) * m.height * m.width);
}

int64_t Engine::call_batch(int64_t num) const {
  if (manifest_.batch_fixed) return batch_size_;
  const int64_t batches = (num + batch_size_ - 1) / batch_size_;
  return (num + batches - 1) / batches;
}

void Engine::sample_counts(const float* x, int64_t num, uint64_t seed, int64_t offset, int32_t* counts,
                           const certseg_certify_options& options, int64_t done_before, int64_t total) {
  const Manifest& m = manifest_;
  const std::size_t pixels = m.height * m.width;
  const std::size_t elements = m.channels * pixels;
  std::memset(counts, 0, m.classes.size() * pixels * sizeof(int32_t));
  // Every sample of the call runs at one static batch size, the Python runtime's GraphBackend.call_batch:
  // reduced-precision kernels can give a sample other labels at another batch size, so a partial last batch run
  // at its own size would mix two base models in one count.  The last batch is padded with stale samples whose
  // labels are dropped.  A fixed-batch graph runs its batch.
  const int64_t step = call_batch(num);
  for (int64_t start = 0; start < num; start += step) {
    const std::size_t b = static_cast<std::size_t>(std::min<int64_t>(step, num - start));
    check(certseg_fill_noisy(x, elements, static_cast<float>(m.sigma), seed, static_cast<uint64_t>(offset + start), b,
                             1.0f, 0.0f, noisy_.data()));
    model_->infer(noisy_.data(), static_cast<std::size_t>(step), batch_labels_.data());
    check(certseg_accumulate_votes(batch_labels_.data(), b, pixels, counts, m.classes.size()));
    if (options.progress != nullptr) options.progress(done_before + start + static_cast<int64_t>(b), total,
                                                      options.progress_user);
  }
}

Json Engine::certify(const float* image, std::size_t channels, std::size_t height, std::size_t width,
                     const certseg_certify_options& o, uint8_t* labels_out, double* pvalues_out) {
  const auto start = std::chrono::steady_clock::now();
  const Manifest& m = manifest_;
  check_certify_options(o);
  if (image == nullptr || labels_out == nullptr) fail(CERTSEG_ERR_ARGUMENT, "image and labels must not be NULL");
  // runtime/sampling.py's check_input, and the engine's fixed input size.
  if (channels != m.image_channels) {
    fail(CERTSEG_ERR_INPUT, "image has shape " + shape_tuple(channels, height, width) + "; the model takes (" +
                                std::to_string(m.image_channels) + ", H, W)");
  }
  if (height == 0 || width == 0) fail(CERTSEG_ERR_INPUT, "image is empty (shape " + shape_tuple(channels, height, width) + ")");
  if (height > kMaxPixels / width) {
    fail(CERTSEG_ERR_INPUT, "image is " + std::to_string(height) + "x" + std::to_string(width) +
                                "; certseg-rt takes images up to 16.8 megapixels (e.g. 4096x4096): downsample it to "
                                "the model's input size");
  }
  if (height != m.height || width != m.width) {
    fail(CERTSEG_ERR_INPUT, "image is " + std::to_string(height) + "x" + std::to_string(width) +
                                " but the engine was built for " + std::to_string(m.height) + "x" +
                                std::to_string(m.width) + "; resize the image (certseg-rt certify does, and converts "
                                "the radius) or rebuild with `certseg-rt build-engine --image-size " +
                                std::to_string(height) + "`");
  }
  const std::size_t pixels = height * width;
  const std::size_t image_elements = channels * pixels;
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  for (std::size_t i = 0; i < image_elements; ++i) {
    const float v = image[i];
    if (!std::isfinite(v)) fail(CERTSEG_ERR_INPUT, "image contains NaN or Inf values; clean or re-export the image");
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  if (lo < 0.0f || hi > 1.0f) {
    fail(CERTSEG_ERR_INPUT, "image values lie in [" + format_g3(lo) + ", " + format_g3(hi) +
                                "]; the model takes [0, 1]: rescale the image");
  }
  // Into the noise space: the image itself, or its one channel replicated into the model's (adapter).
  for (std::size_t c = 0; c < m.channels; ++c) {
    std::memcpy(model_input_.data() + c * pixels, image + (m.replicate ? 0 : c * pixels), pixels * sizeof(float));
  }

  const std::size_t k = m.classes.size();
  std::vector<int32_t> counts0(k * pixels), counts(k * pixels);
  sample_counts(model_input_.data(), o.n0, o.seed, 0, counts0.data(), o, 0, o.n0 + o.n);
  sample_counts(model_input_.data(), o.n, o.seed, o.n0, counts.data(), o, o.n0, o.n0 + o.n);
  std::vector<uint8_t> labels(pixels);
  std::vector<double> pvalues(pixels);
  check(certseg_certify_counts(counts0.data(), counts.data(), k, pixels, o.n, o.tau, o.alpha, o.correction,
                               labels.data(), pvalues.data()));
  double radius = 0;
  check(certseg_certified_radius(m.sigma, o.tau, &radius));

  std::vector<int64_t> per_class(256, 0);
  for (const uint8_t l : labels) per_class[l] += 1;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // The fields and order of `certseg-rt certify IMAGE --engine DIR --json` after its image fields:
  // classes, Certificate.summary (with CertifiedSegmenter's record), resize.Fit.describe, the radius at input.
  Json cert;
  cert["classes"] = m.json["classes"];
  cert["radius"] = radius;
  cert["abstain_fraction"] = static_cast<double>(per_class[CERTSEG_ABSTAIN]) / static_cast<double>(pixels);
  cert["sigma"] = m.sigma;
  cert["tau"] = o.tau;
  cert["alpha"] = o.alpha;
  cert["n0"] = o.n0;
  cert["n"] = o.n;
  cert["seed"] = o.seed;
  cert["correction"] = o.correction == CERTSEG_HOLM ? "holm" : "bonferroni";
  cert["height"] = height;
  cert["width"] = width;
  Json certified = Json::object();
  for (std::size_t c = 0; c < k; ++c) certified[m.classes[c]] = per_class[c];
  cert["certified_pixels"] = certified;
  cert["abstain_label"] = CERTSEG_ABSTAIN;
  // The Python runner's record (runtime/backends/openvino.py), then CertifiedSegmenter's (runtime/segmenter.py).
  cert["backend"] = "openvino:cpu";
  cert["openvino"] = model_->version();
  cert["batch_size"] = batch_size_;
  cert["inference_precision"] = model_->inference_precision();
  cert["threads"] = model_->threads();
  cert["precision"] = m.precision;
  cert["modality"] = m.json.contains("modality") ? m.json["modality"] : Json();
  cert["denoiser"] = m.json.contains("denoiser") ? m.json["denoiser"] : Json();
  cert["adapter"] = m.replicate ? m.json["adapter"] : Json();
  cert["engine_dir"] = m.dir;
  cert["manifest_sha256"] = m.manifest_sha256;
  cert["model_files"] = m.json["files"];
  cert["source_model_files"] = m.json.contains("source_model_files") ? m.json["source_model_files"] : Json::object();
  cert["certseg_rt"] = certseg_runtime_version();
  cert["seconds"] = std::round(seconds * 1e4) / 1e4;
  cert["input_size"] = {height, width};
  cert["model_input_size"] = {m.height, m.width};
  cert["resized"] = false;
  cert["resize"] = nullptr;
  cert["resize_operator_norm"] = 1.0;
  cert["operator_norm"] = m.replicate ? m.adapter_norm : 1.0;  // ||A||_2 of image -> noise space (no resize here)
  // The labels hold in the noise space; a replicating adapter A maps the image's perturbations there with
  // ||A d|| = ||A||_2 ||d||, so in the image they hold within radius / ||A||_2.
  cert["radius_at_input_resolution"] = m.replicate ? radius / m.adapter_norm : radius;

  std::memcpy(labels_out, labels.data(), pixels);
  if (pvalues_out != nullptr) std::memcpy(pvalues_out, pvalues.data(), pixels * sizeof(double));
  return cert;
}

}  // namespace rt
}  // namespace certseg
