// Manifest checks: certseg_rt/manifest.py's load_manifest and _check_fields, in the same order and with the same
// messages, then the OpenVINO runner's own (backend, openvino.*, graphs, adapter).  No model file is parsed here.
#include "manifest.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "certseg_runtime.h"
#include "common.hpp"

namespace certseg {
namespace rt {

const char* const kRebuild = "rebuild it with `certseg-rt build-engine --out DIR`";

namespace fs = std::filesystem;

namespace {

const char* const kRebuildOpenVino = "rebuild the engine with `certseg-rt build-engine --backend openvino --out DIR`";

[[noreturn]] void refuse(const std::string& message) { fail(CERTSEG_ERR_ENGINE, message); }

// repr() of a JSON value as Python would print the loaded value (for messages only).
std::string py_repr(const Json& v) {
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_number_integer()) return v.dump();
  if (v.is_number_float()) return py_float(v.get<double>());
  if (v.is_string()) return py_str(v.get<std::string>());
  return v.dump();
}

// Python's isinstance(v, int) and not isinstance(v, bool) and v >= 1.
bool positive_int(const Json& v) { return v.is_number_integer() && v.get<int64_t>() >= 1; }

bool is_number(const Json& v) { return v.is_number(); }  // nlohmann keeps booleans apart from numbers

// format_version == 1 as Python compares it (1, 1.0 and True all equal 1).
bool is_format_version(const Json& v) {
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() == kFormatVersion;
  return false;
}

void check_fields(const Json& m, const std::string& path) {
  auto bad = [&](const std::string& field, const std::string& rule) {
    refuse(path + " field " + field + " " + rule + "; " + kRebuild);
  };
  const Json& files = m["files"];
  bool files_ok = files.is_object();
  if (files_ok) {
    for (const auto& item : files.items()) files_ok = files_ok && item.value().is_string();
  }
  if (!files_ok) bad("files", "must map file names to sha256 digests");
  for (const char* name : {"backend", "precision"}) {
    if (!m[name].is_string()) bad(name, "must be a string");
  }
  const Json& sigma = m["sigma"];
  if (!is_number(sigma) || !std::isfinite(sigma.get<double>()) || sigma.get<double>() <= 0) {
    bad("sigma", "is " + py_repr(sigma) + "; it must be a number > 0");
  }
  const Json& classes = m["classes"];
  bool classes_ok = classes.is_array() && !classes.empty() && classes.size() <= 255;
  if (classes_ok) {
    for (const auto& c : classes) classes_ok = classes_ok && c.is_string();
  }
  if (!classes_ok) bad("classes", "must list 1 to 255 class names");
  const Json& inp = m["input"];
  auto member = [](const Json& obj, const char* key) { return obj.contains(key) ? obj[key] : Json(); };
  if (!inp.is_object() || !positive_int(member(inp, "channels")) || !positive_int(member(inp, "height")) ||
      !positive_int(member(inp, "width"))) {
    bad("input", "must give channels, height and width as integers >= 1");
  }
  const Json& sizes = m["batch_sizes"];
  if (!sizes.is_object() || !positive_int(member(sizes, "min")) || !positive_int(member(sizes, "opt")) ||
      !positive_int(member(sizes, "max")) || !(sizes["min"].get<int64_t>() <= sizes["opt"].get<int64_t>() &&
                                               sizes["opt"].get<int64_t>() <= sizes["max"].get<int64_t>())) {
    bad("batch_sizes", "must give integers 1 <= min <= opt <= max");
  }
  if (!m["tools"].is_object()) bad("tools", "must be an object");
  if (m.contains("graphs")) {
    const Json& graphs = m["graphs"];
    bool graphs_ok = graphs.is_object();
    if (graphs_ok) {
      for (const auto& g : graphs.items()) {
        const Json& v = g.value();
        graphs_ok = graphs_ok && (v.is_null() || (v.is_string() && files.contains(v.get<std::string>())));
      }
    }
    if (!graphs_ok) bad("graphs", "must name files listed in field files");
  }
}

// manifest.py's _inside: the resolved path lies strictly inside the resolved root.
fs::path inside(const fs::path& root, const std::string& name) {
  std::error_code ec;
  const fs::path real_root = fs::weakly_canonical(root, ec);
  const fs::path path = fs::weakly_canonical(root / name, ec);
  bool ok = !fs::path(name).is_absolute() && !ec;
  if (ok) {
    auto r = real_root.begin();
    auto p = path.begin();
    for (; r != real_root.end() && p != path.end(); ++r, ++p) {
      if (*r != *p) break;
    }
    ok = r == real_root.end() && p != path.end();  // root is a proper prefix of path
  }
  if (!ok) refuse("engine manifest lists file " + py_str(name) + " outside the engine directory; " + kRebuild);
  return path;
}

void check_hashes(Manifest& m, const fs::path& root) {
  for (const auto& item : m.json["files"].items()) {
    const std::string& name = item.key();
    const fs::path file = inside(root, name);
    std::error_code ec;
    if (!fs::is_regular_file(file, ec)) {
      refuse("engine file " + name + " listed in the manifest is missing from " + m.dir + "; " + kRebuild);
    }
    std::string digest;
    if (name == m.fused_xml || name == m.fused_bin) {
      std::vector<uint8_t>& bytes = name == m.fused_xml ? m.fused_xml_bytes : m.fused_bin_bytes;
      bytes = read_file(file.string());
      digest = sha256_bytes(bytes.data(), bytes.size());
    } else {
      digest = sha256_file(file.string());
    }
    if (digest != item.value().get<std::string>()) {
      refuse("engine file " + name + " changed since it was built (sha256 mismatch in field files." + name + "); " +
             kRebuild);
    }
  }
}

// The OpenVINO runner's fields: backend, graphs (each .xml with its .bin, both hashed), openvino.*, adapter.
void check_openvino_fields(Manifest& m) {
  const Json& j = m.json;
  if (m.backend != "openvino") {
    refuse("engine field backend is " + py_str(m.backend) +
           ", which this runtime cannot run (it knows openvino); rebuild it with "
           "`certseg-rt build-engine --backend openvino --out DIR`, or certify it with the Python runtime");
  }
  const Json graphs = j.contains("graphs") ? j["graphs"] : Json::object();
  if (!graphs.is_object() || !graphs.contains("fused") || !graphs["fused"].is_string() ||
      !graphs.contains("segmenter") || !graphs["segmenter"].is_string()) {
    refuse(std::string("engine field graphs must name the fused and the segmenter graph; ") + kRebuildOpenVino);
  }
  m.fused_xml = graphs["fused"].get<std::string>();
  const std::size_t dot = m.fused_xml.rfind('.');
  if (dot == std::string::npos || m.fused_xml.substr(dot) != ".xml") {
    refuse("engine field graphs.fused is " + py_str(m.fused_xml) + ", not an OpenVINO IR (.xml); " + kRebuildOpenVino);
  }
  m.fused_bin = m.fused_xml.substr(0, dot) + ".bin";
  if (!j["files"].contains(m.fused_bin)) {
    refuse("engine field files lacks " + m.fused_bin + " (the weights of " + m.fused_xml +
           "), so they cannot be checked; " + kRebuildOpenVino);
  }
  const Json ov = j.contains("openvino") ? j["openvino"] : Json();
  if (!ov.is_object()) refuse(m.path + " lacks field openvino (an OpenVINO engine records it); " + kRebuildOpenVino);
  if (!ov.contains("version") || !ov["version"].is_string()) {
    refuse(m.path + " field openvino.version must be the OpenVINO version string; " + kRebuildOpenVino);
  }
  m.openvino_version = ov["version"].get<std::string>();
  if (!ov.contains("inference_precision") || !ov["inference_precision"].is_string() ||
      (ov["inference_precision"] != "f32" && ov["inference_precision"] != "bf16")) {
    refuse(m.path + " field openvino.inference_precision must be \"f32\" or \"bf16\", got " +
           (ov.contains("inference_precision") ? ov["inference_precision"].dump() : std::string("nothing")) + "; " +
           kRebuildOpenVino);
  }
  m.inference_precision = ov["inference_precision"].get<std::string>();
  if (m.precision == "fp32" && m.inference_precision != "f32") {
    refuse(m.path + " field openvino.inference_precision is " + m.inference_precision +
           " but field precision is fp32 (the engine would run another base model than the one certified); " +
           kRebuildOpenVino);
  }
  if (m.precision == "bf16" && m.inference_precision != "bf16") {
    refuse(m.path + " field openvino.inference_precision is " + m.inference_precision +
           " but field precision is bf16; " + kRebuildOpenVino);
  }
  // How samples are batched decides the base model's labels at reduced precision (engine.cpp): the one policy
  // both runtimes implement, recorded by the builder.
  if (!ov.contains("batching") || ov["batching"] != "static-per-call") {
    refuse(m.path + " field openvino.batching must be \"static-per-call\", got " +
           (ov.contains("batching") ? ov["batching"].dump() : std::string("nothing")) + "; " + kRebuildOpenVino);
  }
  m.threads = 0;
  if (ov.contains("threads")) {
    if (!positive_int(ov["threads"]) || ov["threads"].get<int64_t>() > 4096) {
      refuse(m.path + " field openvino.threads must be an integer in [1, 4096]; " + kRebuildOpenVino);
    }
    m.threads = ov["threads"].get<int64_t>();
  }
  const Json& tools = j["tools"];
  if (tools.contains("openvino") && tools["openvino"] != ov["version"]) {
    refuse(m.path + " field tools.openvino (" + tools["openvino"].dump() + ") differs from openvino.version (" +
           ov["version"].dump() + "); " + kRebuildOpenVino);
  }

  m.image_channels = m.channels;
  if (j.contains("adapter") && !j["adapter"].is_null()) {
    const Json& a = j["adapter"];
    const std::string kind = a.is_object() && a.contains("kind") && a["kind"].is_string() ? a["kind"].get<std::string>()
                                                                                          : std::string("?");
    if (kind != "replicate") {
      refuse("engine field adapter has kind " + py_str(kind) +
             ", which this runtime cannot apply (it applies replicate); certify with the Python runtime or " +
             kRebuildOpenVino + " without it");
    }
    auto member = [&](const char* key) { return a.contains(key) ? a[key] : Json(); };
    if (!positive_int(member("image_channels")) || member("image_channels").get<int64_t>() != 1 ||
        !positive_int(member("channels")) || static_cast<std::size_t>(member("channels").get<int64_t>()) != m.channels) {
      refuse(m.path + " field adapter must replicate image_channels 1 into the input's " + std::to_string(m.channels) +
             " channels; " + kRebuildOpenVino);
    }
    m.replicate = true;
    m.image_channels = 1;
    m.adapter_norm = std::sqrt(static_cast<double>(m.channels));
    if (a.contains("operator_norm") &&
        !(is_number(a["operator_norm"]) && std::fabs(a["operator_norm"].get<double>() - m.adapter_norm) <= 1e-12)) {
      refuse(m.path + " field adapter.operator_norm is " + py_repr(a["operator_norm"]) + ", but replicating 1 channel into " +
             std::to_string(m.channels) + " has norm sqrt(" + std::to_string(m.channels) + "); " + kRebuildOpenVino);
    }
  }
}

}  // namespace

std::string openvino_release(const std::string& version) { return version.substr(0, version.find('-')); }

Manifest load_manifest(const std::string& engine_dir) {
  Manifest m;
  m.dir = py_path(engine_dir);
  const fs::path root(engine_dir.empty() ? "." : engine_dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    refuse("engine directory " + m.dir + " does not exist; build one with `certseg-rt build-engine --out " + m.dir +
           "`");
  }
  m.path = m.dir + "/manifest.json";
  const fs::path path = root / "manifest.json";
  if (!fs::exists(path, ec)) {
    refuse(m.dir + " has no manifest.json, so it is not an engine directory; " + kRebuild);
  }
  std::vector<uint8_t> text;
  try {
    text = read_file(path.string());
  } catch (const Error& e) {
    refuse(std::string("cannot read ") + m.path + " (" + e.what() + "); " + kRebuild);
  }
  m.manifest_sha256 = sha256_bytes(text.data(), text.size());
  try {
    m.json = Json::parse(text.begin(), text.end());
  } catch (const Json::parse_error& e) {
    std::string why = e.what();
    refuse(m.path + " is not valid JSON (" + why.substr(0, why.find('\n')) + "); " + kRebuild);
  }
  if (!m.json.is_object()) refuse(m.path + " is not a JSON object; " + kRebuild);
  static const char* const kRequired[] = {"format_version", "backend", "precision", "sigma", "classes",
                                          "input", "batch_sizes", "files", "tools"};
  std::string missing;
  for (const char* k : kRequired) {
    if (!m.json.contains(k)) missing += (missing.empty() ? "" : ", ") + std::string(k);
  }
  if (!missing.empty()) refuse(m.path + " lacks field(s) " + missing + "; " + kRebuild);
  if (!is_format_version(m.json["format_version"])) {
    refuse(m.path + " has format_version " + py_repr(m.json["format_version"]) + ", this certseg-rt reads " +
           std::to_string(kFormatVersion) + "; " + kRebuild);
  }
  check_fields(m.json, m.path);

  m.backend = m.json["backend"].get<std::string>();
  m.precision = m.json["precision"].get<std::string>();
  m.sigma = m.json["sigma"].get<double>();
  for (const auto& c : m.json["classes"]) m.classes.push_back(c.get<std::string>());
  m.channels = m.json["input"]["channels"].get<std::size_t>();
  m.height = m.json["input"]["height"].get<std::size_t>();
  m.width = m.json["input"]["width"].get<std::size_t>();
  m.batch_min = m.json["batch_sizes"]["min"].get<int64_t>();
  m.batch_opt = m.json["batch_sizes"]["opt"].get<int64_t>();
  m.batch_max = m.json["batch_sizes"]["max"].get<int64_t>();
  const Json& sizes = m.json["batch_sizes"];
  m.batch_fixed = sizes.contains("fixed") && sizes["fixed"].is_boolean() && sizes["fixed"].get<bool>();
  // Fields first (no file read yet), then every hash, before the runner parses any model file.
  if (m.backend == "openvino") check_openvino_fields(m);
  check_hashes(m, root);
  if (m.backend != "openvino") check_openvino_fields(m);  // refuses, after the checks Python makes first
  return m;
}

}  // namespace rt
}  // namespace certseg
