// The runtime's C API (include/certseg_runtime.h): every entry point catches everything, keeps the message for
// certseg_runtime_last_error() and returns a code.  No exception leaves this file.
#include "certseg_runtime.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "common.hpp"
#include "engine.hpp"

#ifndef CERTSEG_RT_VERSION
#error "CERTSEG_RT_VERSION must be defined by the build (the Python package's version, from pyproject.toml)"
#endif

struct certseg_engine {
  certseg::rt::Engine engine;
  std::string note;
  certseg_engine(const std::string& dir, const certseg_open_options& o)
      : engine(dir, o.threads, o.batch_size, o.cache_dir, o.n0, o.n) {
    for (const std::string& line : engine.model().notes()) note += (note.empty() ? "" : "; ") + line;
  }
};

namespace {

thread_local std::string g_last_error;

template <typename F>
int guarded(F&& body) {
  try {
    body();
    g_last_error.clear();
    return CERTSEG_OK;
  } catch (const certseg::rt::Error& e) {
    g_last_error = e.what();
    return e.code();
  } catch (const std::bad_alloc&) {
    g_last_error = "out of memory";
    return CERTSEG_ERR_MEMORY;
  } catch (const std::exception& e) {
    g_last_error = std::string("internal error: ") + e.what();
    return CERTSEG_ERR_ENGINE;
  } catch (...) {
    g_last_error = "internal error (unknown exception)";
    return CERTSEG_ERR_ENGINE;
  }
}

}  // namespace

extern "C" {

const char* certseg_runtime_last_error(void) { return g_last_error.c_str(); }

const char* certseg_runtime_version(void) { return CERTSEG_RT_VERSION; }

void certseg_open_options_init(certseg_open_options* options) {
  if (options == nullptr) return;
  options->threads = 0;
  options->batch_size = 0;
  options->cache_dir = nullptr;
  options->n0 = 0;
  options->n = 0;
}

int certseg_engine_open(const char* engine_dir, const certseg_open_options* options, certseg_engine** engine) {
  if (engine != nullptr) *engine = nullptr;
  return guarded([&] {
    if (engine_dir == nullptr || engine == nullptr) {
      certseg::rt::fail(CERTSEG_ERR_ARGUMENT, "engine_dir and engine must not be NULL");
    }
    certseg_open_options defaults;
    certseg_open_options_init(&defaults);
    const certseg_open_options& o = options != nullptr ? *options : defaults;
    if (o.n0 < 0 || o.n < 0) certseg::rt::fail(CERTSEG_ERR_ARGUMENT, "options n0 and n must be >= 0 (0: the defaults)");
    *engine = new certseg_engine(engine_dir, o);
  });
}

const char* certseg_engine_note(const certseg_engine* engine) { return engine == nullptr ? "" : engine->note.c_str(); }

void certseg_engine_close(certseg_engine* engine) { delete engine; }

int certseg_engine_image_shape(const certseg_engine* engine, size_t* channels, size_t* height, size_t* width) {
  return guarded([&] {
    if (engine == nullptr) certseg::rt::fail(CERTSEG_ERR_ARGUMENT, "engine is NULL");
    const certseg::rt::Manifest& m = engine->engine.manifest();
    if (channels != nullptr) *channels = m.image_channels;
    if (height != nullptr) *height = m.height;
    if (width != nullptr) *width = m.width;
  });
}

size_t certseg_engine_num_classes(const certseg_engine* engine) {
  return engine == nullptr ? 0 : engine->engine.manifest().classes.size();
}

const char* certseg_engine_class_name(const certseg_engine* engine, size_t i) {
  if (engine == nullptr || i >= engine->engine.manifest().classes.size()) return nullptr;
  return engine->engine.manifest().classes[i].c_str();
}

double certseg_engine_sigma(const certseg_engine* engine) {
  return engine == nullptr ? 0.0 : engine->engine.manifest().sigma;
}

void certseg_certify_options_init(certseg_certify_options* options) {
  if (options == nullptr) return;
  options->n0 = 10;
  options->n = 100;
  options->tau = 0.75;
  options->alpha = 0.001;
  options->seed = 0;
  options->correction = CERTSEG_HOLM;
  options->progress = nullptr;
  options->progress_user = nullptr;
}

int certseg_certify_options_check(const certseg_certify_options* options) {
  return guarded([&] {
    if (options == nullptr) certseg::rt::fail(CERTSEG_ERR_ARGUMENT, "options is NULL");
    certseg::rt::check_certify_options(*options);
  });
}

int certseg_certify(certseg_engine* engine, const float* image, size_t channels, size_t height, size_t width,
                    const certseg_certify_options* options, uint8_t* labels, double* pvalues,
                    char** certificate_json) {
  return guarded([&] {
    if (engine == nullptr) certseg::rt::fail(CERTSEG_ERR_ARGUMENT, "engine is NULL");
    certseg_certify_options defaults;
    certseg_certify_options_init(&defaults);
    const certseg::rt::Json cert =
        engine->engine.certify(image, channels, height, width, options != nullptr ? *options : defaults, labels,
                               pvalues);
    if (certificate_json != nullptr) {
      const std::string text = cert.dump(-1, ' ', false, certseg::rt::Json::error_handler_t::replace);
      char* out = static_cast<char*>(std::malloc(text.size() + 1));
      if (out == nullptr) throw std::bad_alloc();
      std::memcpy(out, text.c_str(), text.size() + 1);
      *certificate_json = out;
    }
  });
}

void certseg_string_free(char* s) { std::free(s); }

int certseg_sha256_file(const char* path, char hex[65]) {
  return guarded([&] {
    if (path == nullptr || hex == nullptr) certseg::rt::fail(CERTSEG_ERR_ARGUMENT, "path and hex must not be NULL");
    const std::string digest = certseg::rt::sha256_file(path);
    std::memcpy(hex, digest.c_str(), 65);
  });
}

}  // extern "C"
