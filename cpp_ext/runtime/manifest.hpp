// The engine directory's manifest, checked as certseg_rt/manifest.py checks it (same order, same one-line
// messages), plus what the OpenVINO contract adds (backend, openvino.*, the graphs' .xml/.bin pairs, adapter).
#ifndef CERTSEG_RUNTIME_MANIFEST_HPP
#define CERTSEG_RUNTIME_MANIFEST_HPP

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace certseg {
namespace rt {

using Json = nlohmann::ordered_json;  // keeps the manifest's key order, as Python's json does

constexpr int kFormatVersion = 1;
extern const char* const kRebuild;  // "rebuild it with `certseg-rt build-engine --out DIR`"

struct Manifest {
  std::string dir;   // str(Path(engine_dir)), as the Python runtime writes it into messages and certificates
  std::string path;  // dir/manifest.json
  Json json;         // the whole manifest
  std::string manifest_sha256;

  std::string backend, precision;
  double sigma = 0;
  std::vector<std::string> classes;
  std::size_t channels = 0, height = 0, width = 0;  // the fused graph's input (the noise space)
  int64_t batch_min = 0, batch_opt = 0, batch_max = 0;
  bool batch_fixed = false;  // batch_sizes.fixed: the graph takes exactly batch_opt samples

  // Input adapter "replicate": the image has image_channels (1) channels, replicated into `channels`.
  bool replicate = false;
  std::size_t image_channels = 0;
  double adapter_norm = 1.0;  // ||A||_2 = sqrt(channels / image_channels)

  // OpenVINO contract.
  std::string openvino_version;      // openvino.version as built
  std::string inference_precision;   // "f32" | "bf16"
  int64_t threads = 0;               // openvino.threads
  // openvino.batching "static-per-call": every sample of a call runs at one static batch (see engine.cpp).
  std::string fused_xml, fused_bin;  // names inside the directory (both hashed)
  // The fused model's bytes as hashed: OpenVINO parses exactly these (no second read from disk).
  std::vector<uint8_t> fused_xml_bytes, fused_bin_bytes;
};

// Read and check everything the runtime relies on, then every file's SHA-256; throws Error(CERTSEG_ERR_ENGINE).
Manifest load_manifest(const std::string& engine_dir);

// "2026.4.1" of "2026.4.1-22982-e213a147257-releases/2026/4": what must match between build and run.
std::string openvino_release(const std::string& version);

}  // namespace rt
}  // namespace certseg

#endif
