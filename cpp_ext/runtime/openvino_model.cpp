// OpenVINO's C++ API: read the IR from the bytes the manifest check hashed, compile it as the manifest says,
// infer through tensors that wrap the caller's buffers.
#include "openvino_model.hpp"

#include <algorithm>
#include <memory>
#include <openvino/openvino.hpp>
#include <sstream>
#include <vector>

#include "certseg_runtime.h"
#include "common.hpp"
#include "model_cache.hpp"

namespace certseg {
namespace rt {

namespace {

const char* const kRebuildOpenVino = "rebuild the engine with `certseg-rt build-engine --backend openvino --out DIR`";

[[noreturn]] void refuse(const std::string& message) { fail(CERTSEG_ERR_ENGINE, message); }

std::string first_line(const std::string& s, std::size_t limit = 200) {
  std::string line = s.substr(0, s.find('\n'));
  // OpenVINO's messages start with the source location ("Exception from src/...cpp:123:"); keep the reason.
  const std::size_t cut = line.rfind(".cpp:");
  if (cut != std::string::npos) {
    const std::size_t colon = line.find(':', cut + 5);
    if (colon != std::string::npos && colon + 1 < line.size()) line = line.substr(colon + 1);
  }
  while (!line.empty() && line.front() == ' ') line.erase(0, 1);
  return line.size() > limit ? line.substr(0, limit) : line;
}

std::string element_name(const ov::element::Type& t) { return t.get_type_name(); }

std::string shape_str(const ov::PartialShape& s) { return s.to_string(); }

}  // namespace

struct OpenVinoModel::Impl {
  struct Static {  // the model compiled for one batch size
    std::size_t batch;
    ov::CompiledModel compiled;
    ov::InferRequest request;
  };
  ov::Core core;
  ov::Tensor weights;  // over the manifest's fused_bin_bytes, alive as long as the model
  std::shared_ptr<ov::Model> model;
  ov::AnyMap properties;
  std::string xml_name, inference_precision;
  std::vector<Static> compiled;  // least recently used first
  std::size_t channels = 0, height = 0, width = 0;
  std::unique_ptr<ModelCache> cache;  // null: no cache
  std::string graph;                  // "<sha256 of the .xml> <sha256 of the .bin>", the manifest's
  int threads = 0;
  std::vector<std::string> notes;

  Static& at(std::size_t batch);
  ov::CompiledModel compile(std::size_t batch);
};

// The compile for a static batch, imported from the cache when it holds exactly this compile; a fresh compile is
// stored.  The key is runtime/backends/openvino.py's cache_key, line for line.
ov::CompiledModel OpenVinoModel::Impl::compile(std::size_t batch) {
  const std::vector<int64_t> shape = {static_cast<int64_t>(batch), static_cast<int64_t>(channels),
                                      static_cast<int64_t>(height), static_cast<int64_t>(width)};
  std::string key;
  if (cache) {
    std::string input;
    for (const int64_t d : shape) input += (input.empty() ? "" : "x") + std::to_string(d);
    key = key_text({{"backend", "openvino"},
                    {"openvino", ov::get_openvino_version().buildNumber},
                    {"device", core.get_property("CPU", ov::device::full_name)},
                    {"graph", graph},
                    {"input", input},
                    {"INFERENCE_PRECISION_HINT", inference_precision},
                    {"PERFORMANCE_HINT", "LATENCY"},
                    {"NUM_STREAMS", "1"},
                    {"INFERENCE_NUM_THREADS", std::to_string(threads)}});
    std::string payload;
    if (cache->read(key, payload)) {
      try {
        std::istringstream stream(payload);
        ov::CompiledModel c = core.import_model(stream, "CPU", properties);
        if (c.input().get_shape() == ov::Shape(shape.begin(), shape.end())) return c;
      } catch (const std::exception&) {  // OpenVINO's own header check (release, CPU) refused it: compile again
      }
      cache->refused();
    }
  }
  std::shared_ptr<ov::Model> shaped = model->clone();
  shaped->reshape(ov::PartialShape(std::vector<ov::Dimension>(shape.begin(), shape.end())));
  ov::CompiledModel c = core.compile_model(shaped, "CPU", properties);
  if (cache) {
    std::ostringstream stream;
    c.export_model(stream);
    std::string note;
    if (!cache->write(key, stream.str(), note) && !note.empty()) notes.push_back(note);
  }
  return c;
}

// The model compiled for a static batch (a dynamic batch runs ~1.5x slower; reduced precision picks its kernels
// per shape, which is why every sample of a call runs at one batch size: engine.cpp).
OpenVinoModel::Impl::Static& OpenVinoModel::Impl::at(std::size_t batch) {
  for (std::size_t i = 0; i < compiled.size(); ++i) {
    if (compiled[i].batch == batch) {
      if (i + 1 != compiled.size()) std::rotate(compiled.begin() + i, compiled.begin() + i + 1, compiled.end());
      return compiled.back();
    }
  }
  if (compiled.size() >= 2) compiled.erase(compiled.begin());
  ov::CompiledModel c = compile(batch);
  const ov::element::Type ran = c.get_property(ov::hint::inference_precision);
  if (ran.get_type_name() != inference_precision) {
    refuse("OpenVINO compiled " + xml_name + " for inference precision " + ran.get_type_name() + " instead of " +
           inference_precision + " (engine field openvino.inference_precision); it would run another base "
           "model than the one certified: " + kRebuildOpenVino + " on this machine");
  }
  compiled.push_back(Static{batch, c, c.create_infer_request()});
  return compiled.back();
}

OpenVinoModel::OpenVinoModel(Manifest& m, int threads, const std::vector<int64_t>& batches,
                             const std::string& cache_root)
    : impl_(new Impl) {
  Impl& s = *impl_;
  s.channels = m.channels;
  s.height = m.height;
  s.width = m.width;
  const std::string here = ov::get_openvino_version().buildNumber;
  if (openvino_release(m.openvino_version) != openvino_release(here)) {
    refuse("engine field openvino.version is " + m.openvino_version + ", but this is OpenVINO " + here +
           "; install openvino==" + openvino_release(m.openvino_version) + " (and rebuild certseg-run) or " +
           kRebuildOpenVino);
  }
  try {
    if (m.inference_precision == "bf16") {
      const auto caps = s.core.get_property("CPU", ov::device::capabilities);
      if (std::find(caps.begin(), caps.end(), ov::device::capability::BF16) == caps.end()) {
        refuse("engine precision is bf16 but this CPU has no native bf16 (OpenVINO's CPU plugin does not report "
               "BF16 in OPTIMIZATION_CAPABILITIES), so it would run another base model than the one certified; "
               "rebuild the engine here with `certseg-rt build-engine --backend openvino --precision fp32 --out DIR`");
      }
    }
    std::shared_ptr<ov::Model> model;
    try {
      s.weights = ov::Tensor(ov::element::u8, ov::Shape{m.fused_bin_bytes.size()}, m.fused_bin_bytes.data());
      const std::string xml(m.fused_xml_bytes.begin(), m.fused_xml_bytes.end());
      model = s.core.read_model(xml, s.weights);
    } catch (const ov::Exception& e) {
      refuse("cannot load " + m.fused_xml + " with OpenVINO (" + first_line(e.what()) +
             "); the file is corrupt or was built for another version: " + kRebuildOpenVino);
    }
    if (model->inputs().size() != 1 || model->outputs().size() != 1) {
      refuse("engine graph " + m.fused_xml + " has " + std::to_string(model->inputs().size()) + " inputs and " +
             std::to_string(model->outputs().size()) + " outputs; the fused graph has one of each; " + kRebuildOpenVino);
    }
    const ov::PartialShape in_shape = model->input().get_partial_shape();
    const ov::PartialShape out_shape = model->output().get_partial_shape();
    const std::vector<int64_t> want_in = {static_cast<int64_t>(m.channels), static_cast<int64_t>(m.height),
                                          static_cast<int64_t>(m.width)};
    const std::vector<int64_t> want_out = {static_cast<int64_t>(m.height), static_cast<int64_t>(m.width)};
    auto matches = [](const ov::PartialShape& got, const std::vector<int64_t>& want) {
      if (got.rank().is_dynamic() || got.rank().get_length() != static_cast<int64_t>(want.size()) + 1) return false;
      for (std::size_t i = 0; i < want.size(); ++i) {
        if (got[i + 1].is_static() && got[i + 1].get_length() != want[i]) return false;
      }
      return true;
    };
    if (model->output().get_element_type() != ov::element::u8 || !matches(in_shape, want_in) ||
        !matches(out_shape, want_out)) {
      refuse("engine graph " + m.fused_xml + " takes " + shape_str(in_shape) + " and gives " +
             element_name(model->output().get_element_type()) + " " + shape_str(out_shape) +
             ", but the manifest (field input) describes labels (uint8) of a [" + std::to_string(m.channels) + ", " +
             std::to_string(m.height) + ", " + std::to_string(m.width) + "] image; " + kRebuildOpenVino);
    }
    s.model = model;
    s.xml_name = m.fused_xml;
    s.inference_precision = m.inference_precision;
    const ov::element::Type precision = m.inference_precision == "bf16" ? ov::element::bf16 : ov::element::f32;
    s.properties = {ov::hint::inference_precision(precision),
                    ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY), ov::num_streams(1),
                    ov::inference_num_threads(threads)};
    s.threads = threads;
    if (!cache_root.empty()) {
      const Json& files = m.json["files"];
      s.cache.reset(new ModelCache(cache_root, "openvino"));
      s.graph = files[m.fused_xml].get<std::string>() + " " + files[m.fused_bin].get<std::string>();
    }
    // Compiled (or imported) at load, so that the calls expected compile nothing; a model that cannot compile
    // fails here.  Only the last two are kept (at()), as in Python.
    const std::size_t first = batches.size() > 2 ? batches.size() - 2 : 0;
    for (std::size_t i = first; i < batches.size(); ++i) s.at(static_cast<std::size_t>(batches[i]));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    refuse("cannot compile " + m.fused_xml + " with OpenVINO (" + first_line(e.what()) + "); " + kRebuildOpenVino);
  }
}

OpenVinoModel::~OpenVinoModel() = default;

void OpenVinoModel::infer(float* noisy, std::size_t batch, uint8_t* labels) {
  Impl& s = *impl_;
  try {
    ov::InferRequest& request = s.at(batch).request;
    request.set_input_tensor(ov::Tensor(ov::element::f32, ov::Shape{batch, s.channels, s.height, s.width}, noisy));
    request.set_output_tensor(ov::Tensor(ov::element::u8, ov::Shape{batch, s.height, s.width}, labels));
    request.infer();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(CERTSEG_ERR_INFER, std::string("OpenVINO inference failed (") + first_line(e.what()) + ")");
  }
}

std::string OpenVinoModel::version() const { return ov::get_openvino_version().buildNumber; }

std::string OpenVinoModel::inference_precision() const {
  return impl_->compiled.back().compiled.get_property(ov::hint::inference_precision).get_type_name();
}

int OpenVinoModel::threads() const { return impl_->compiled.back().compiled.get_property(ov::inference_num_threads); }

const std::vector<std::string>& OpenVinoModel::notes() const { return impl_->notes; }

int OpenVinoModel::cache_hits() const { return impl_->cache ? impl_->cache->hits : 0; }
int OpenVinoModel::cache_misses() const { return impl_->cache ? impl_->cache->misses : 0; }
int OpenVinoModel::cache_rejected() const { return impl_->cache ? impl_->cache->rejected : 0; }

}  // namespace rt
}  // namespace certseg
