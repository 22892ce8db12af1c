// certseg-run ENGINE_DIR IMAGE [options]: certify one image with an OpenVINO engine directory, without Python.
// The native twin of `certseg-rt certify IMAGE --engine ENGINE_DIR`: the same checks, messages, exit codes
// (0; 1 with one line on stderr; 2 for usage) and certificate fields; nothing is written on failure.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "certseg_runtime.h"
#include "../runtime/common.hpp"
#include "image_io.hpp"

namespace {

using Json = nlohmann::ordered_json;
using certseg::tools::UserError;

const char* const kUsage = "Usage: certseg-run [OPTIONS] ENGINE_DIR IMAGE";

const char* const kHelp =
    "\n"
    "  Certify one image with an OpenVINO engine directory (certseg-rt build-engine --backend openvino):\n"
    "  per-pixel labels that provably hold within an L2 radius.  The image must have the engine's input size.\n"
    "\n"
    "  Example:\n"
    "    certseg-run engines/chest-ov scan.png --out mask.png --json\n"
    "\n"
    "Options:\n"
    "  --out MASK.png                  write the certified mask here (PNG: class index per pixel, 255 = abstain)\n"
    "  --json                          print the certificate as JSON\n"
    "  --tau FLOAT                     class-probability threshold; radius = sigma * Phi^-1(tau)  [default: 0.75]\n"
    "  --alpha FLOAT                   family-wise error over all pixels of an image  [default: 0.001]\n"
    "  --n0 INTEGER                    selection samples  [default: 10]\n"
    "  --n INTEGER                     estimation samples  [default: 100]\n"
    "  --seed INTEGER                  noise stream  [default: 0]\n"
    "  --correction [holm|bonferroni]  multiple-testing correction over pixels  [default: holm]\n"
    "  --sigma FLOAT                   must equal the engine's sigma (fixed when the engine is built)\n"
    "  --batch-size INTEGER            samples per forward pass  [default: the engine's batch_sizes.opt]\n"
    "  --threads INTEGER               OpenVINO inference threads  [default: the engine's openvino.threads]\n"
    "  --cache-dir PATH                folder of the compiled-model cache, shared with certseg-rt  [default:\n"
    "                                  $CERTSEG_CACHE_DIR, else ~/.cache/certseg-rt]\n"
    "  --no-cache                      compile the engine in this process and keep nothing\n"
    "  --version                       show the version and exit\n"
    "  -h, --help                      show this message and exit\n";

struct Usage {
  std::string message;
};

struct Args {
  std::string engine, image, out;
  bool json = false;
  certseg_certify_options certify{};
  std::string seed = "0";
  bool has_sigma = false;
  double sigma = 0;
  int64_t batch_size = -1;  // unset: the engine's
  int64_t threads = -1;     // unset: the engine's
  bool has_cache_dir = false, no_cache = false;
  std::string cache_dir;
};

int64_t parse_int(const std::string& option, const std::string& value) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0') throw Usage{"Invalid value for '" + option + "': '" + value + "' is not a valid integer."};
  if (errno == ERANGE) return v < 0 ? INT64_MIN : INT64_MAX;  // out of every range below: refused with its rule
  return v;
}

double parse_float(const std::string& option, const std::string& value) {
  char* end = nullptr;
  const double v = std::strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0') throw Usage{"Invalid value for '" + option + "': '" + value + "' is not a valid float."};
  return v;
}

// An integer (else a usage error, as click's INT); whether it is a valid seed is checked with the other parameters.
std::string parse_seed(const std::string& value) {
  const std::size_t digits = value.find_first_not_of("+-") == 1 ? 1 : 0;
  if (value.size() <= digits || value.find_first_not_of("0123456789", digits) != std::string::npos) {
    throw Usage{"Invalid value for '--seed': '" + value + "' is not a valid integer."};
  }
  return value;
}

uint64_t check_seed(const std::string& value) {
  const bool negative = value[0] == '-';
  errno = 0;
  const unsigned long long v = negative ? 0 : std::strtoull(value.c_str(), nullptr, 10);
  if ((negative && value.find_first_not_of("-0") != std::string::npos) || errno == ERANGE) {
    throw UserError("invalid seed=" + value + ": must be an integer in [0, 2**64)");
  }
  return v;
}

Args parse(int argc, char** argv) {
  Args a;
  certseg_certify_options_init(&a.certify);
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i], value;
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage << "\n" << kHelp;
      std::exit(0);
    }
    if (arg == "--version") {
      std::cout << "certseg-run " << certseg_runtime_version() << "\n";
      std::exit(0);
    }
    if (arg == "--") {
      for (++i; i < argc; ++i) positional.push_back(argv[i]);
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      positional.push_back(arg);
      continue;
    }
    const std::size_t eq = arg.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    if (arg == "--json" || arg == "--no-cache") {
      if (inline_value) throw Usage{"Option '" + arg + "' does not take a value."};
      (arg == "--json" ? a.json : a.no_cache) = true;
      continue;
    }
    static const char* const kValued[] = {"--out", "--tau", "--alpha", "--n0", "--n", "--seed", "--correction",
                                          "--sigma", "--batch-size", "--threads", "--cache-dir"};
    bool known = false;
    for (const char* o : kValued) known = known || arg == o;
    if (!known) throw Usage{"No such option: " + arg};
    if (!inline_value) {
      if (i + 1 >= argc) throw Usage{"Option '" + arg + "' requires an argument."};
      value = argv[++i];
    }
    if (arg == "--out") a.out = value;
    if (arg == "--tau") a.certify.tau = parse_float(arg, value);
    if (arg == "--alpha") a.certify.alpha = parse_float(arg, value);
    if (arg == "--n0") a.certify.n0 = parse_int(arg, value);
    if (arg == "--n") a.certify.n = parse_int(arg, value);
    if (arg == "--seed") a.seed = parse_seed(value);
    if (arg == "--sigma") a.has_sigma = true, a.sigma = parse_float(arg, value);
    if (arg == "--batch-size") a.batch_size = parse_int(arg, value);
    if (arg == "--threads") a.threads = parse_int(arg, value);
    if (arg == "--cache-dir") a.has_cache_dir = true, a.cache_dir = value;
    if (arg == "--correction") {
      if (value != "holm" && value != "bonferroni") {
        throw Usage{"Invalid value for '--correction': '" + value + "' is not one of 'holm', 'bonferroni'."};
      }
      a.certify.correction = value == "holm" ? CERTSEG_HOLM : CERTSEG_BONFERRONI;
    }
  }
  if (positional.size() < 2) throw Usage{std::string("Missing argument '") + (positional.empty() ? "ENGINE_DIR" : "IMAGE") + "'."};
  if (positional.size() > 2) throw Usage{"Got unexpected extra argument (" + positional[2] + ")"};
  a.engine = positional[0];
  a.image = positional[1];
  return a;
}

using certseg::rt::py_float;  // repr() of a Python float: the Python CLI's messages
using certseg::rt::py_path;   // str(pathlib.Path(p)): how the Python CLI writes paths into the certificate

struct Progress {
  std::string name;
  bool shown = false;
  static void update(int64_t done, int64_t total, void* user) {
    auto* p = static_cast<Progress*>(user);
    std::fprintf(stderr, "\rcertify %s: %lld/%lld samples", p->name.c_str(), static_cast<long long>(done),
                 static_cast<long long>(total));
    std::fflush(stderr);
    p->shown = true;
  }
  ~Progress() {
    if (shown) std::fprintf(stderr, "\r\033[K");
  }
};

struct EngineCloser {
  void operator()(certseg_engine* e) const { certseg_engine_close(e); }
};

int run(const Args& a) {
  // certify_verbs.certify's order: parameters, --out, the image file, the engine, --sigma, the image, certify.
  certseg_certify_options o = a.certify;
  o.seed = check_seed(a.seed);
  if (a.has_sigma && !(std::isfinite(a.sigma) && a.sigma > 0)) {
    throw UserError("invalid sigma=" + py_float(a.sigma) + ": must be a finite number > 0");
  }
  if (certseg_certify_options_check(&o) != CERTSEG_OK) throw UserError(certseg_runtime_last_error());
  if (!a.out.empty()) {
    const std::string ext = std::filesystem::path(a.out).extension().string();
    std::string lower = ext;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower != ".png") throw UserError("--out " + py_path(a.out) + " must end in .png (the mask is written as a PNG)");
  }
  std::error_code ec;
  if (!std::filesystem::is_regular_file(a.image, ec)) {
    throw UserError("image " + py_path(a.image) + " does not exist (or is not a file)");
  }
  if (a.batch_size != -1 && a.batch_size < 1) {
    throw UserError("invalid batch-size=" + std::to_string(a.batch_size) + ": must be an integer >= 1");
  }
  if (a.threads != -1 && (a.threads < 1 || a.threads > 4096)) {
    throw UserError("--threads " + std::to_string(a.threads) + " must be >= 1 (omit it for the engine's)");
  }
  if (a.no_cache && a.has_cache_dir) throw UserError("--cache-dir and --no-cache contradict each other; give one");
  certseg_open_options open;
  certseg_open_options_init(&open);
  open.threads = a.threads == -1 ? 0 : static_cast<int>(a.threads);
  // Beyond int's range the engine's batch range refuses it (the range is at most a few thousand).
  open.batch_size = a.batch_size == -1 ? 0 : static_cast<int>(std::min<int64_t>(a.batch_size, 1 << 30));
  // An empty --cache-dir is the current folder, as pathlib reads it in the Python CLI.
  const std::string cache_dir = a.cache_dir.empty() ? "." : a.cache_dir;
  open.cache_dir = a.no_cache ? "" : (a.has_cache_dir ? cache_dir.c_str() : nullptr);
  open.n0 = o.n0;  // their static batches are compiled (or imported from the cache) at open
  open.n = o.n;
  certseg_engine* raw_engine = nullptr;
  if (certseg_engine_open(a.engine.c_str(), &open, &raw_engine) != CERTSEG_OK) throw UserError(certseg_runtime_last_error());
  const std::unique_ptr<certseg_engine, EngineCloser> engine(raw_engine);
  if (*certseg_engine_note(engine.get())) std::fprintf(stderr, "note: %s\n", certseg_engine_note(engine.get()));
  const double sigma = certseg_engine_sigma(engine.get());
  if (a.has_sigma && !(std::fabs(a.sigma - sigma) <= 1e-12)) {
    throw UserError("--sigma " + py_float(a.sigma) + " differs from the engine's sigma " + py_float(sigma) +
                    " (manifest field sigma; the denoiser's timestep depends on it); rebuild with `certseg-rt "
                    "build-engine --sigma " + py_float(a.sigma) + "` or omit --sigma");
  }
  std::size_t channels = 0, height = 0, width = 0;
  certseg_engine_image_shape(engine.get(), &channels, &height, &width);
  const certseg::tools::Image image = certseg::tools::read_image(
      a.image, channels, [](const std::string& m) { std::fprintf(stderr, "note: %s\n", m.c_str()); });

  Progress progress{std::filesystem::path(a.image).filename().string()};
  certseg_certify_options options = o;
  if (isatty(STDERR_FILENO)) {
    options.progress = &Progress::update;
    options.progress_user = &progress;
  }
  std::vector<uint8_t> labels(image.height * image.width);
  char* text = nullptr;
  if (certseg_certify(engine.get(), image.data.data(), image.channels, image.height, image.width, &options,
                      labels.data(), nullptr, &text) != CERTSEG_OK) {
    throw UserError(certseg_runtime_last_error());
  }
  const Json cert = Json::parse(text);
  certseg_string_free(text);

  char digest[65];
  if (certseg_sha256_file(a.image.c_str(), digest) != CERTSEG_OK) throw UserError(certseg_runtime_last_error());
  Json summary;
  summary["image"] = py_path(a.image);
  summary["image_sha256"] = digest;
  for (const auto& item : cert.items()) summary[item.key()] = item.value();
  if (!a.out.empty()) {
    // Ctrl-C or a kill while the mask is written would leave its temporary file behind: hold them until the
    // rename is done (then the mask is complete).
    sigset_t hold, previous;
    sigemptyset(&hold);
    for (const int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&hold, sig);
    sigprocmask(SIG_BLOCK, &hold, &previous);
    try {
      certseg::tools::write_mask(a.out, labels.data(), image.height, image.width);
    } catch (...) {
      sigprocmask(SIG_SETMASK, &previous, nullptr);
      throw;
    }
    sigprocmask(SIG_SETMASK, &previous, nullptr);
    summary["mask"] = py_path(a.out);
  }
  if (a.json) {
    std::cout << summary.dump(2, ' ', true) << std::endl;
  } else {
    std::string per_class;
    for (const auto& item : summary["certified_pixels"].items()) {
      per_class += (per_class.empty() ? "" : ", ") + item.key() + " " + item.value().dump();
    }
    std::printf("%s: radius %.4f, abstained %.1f%%, certified pixels: %s (%.2f s, %s)\n", summary["image"].get<std::string>().c_str(),
                summary["radius"].get<double>(), 100.0 * summary["abstain_fraction"].get<double>(), per_class.c_str(),
                summary["seconds"].get<double>(), summary["backend"].get<std::string>().c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const Usage& u) {
    std::fprintf(stderr, "%s\nTry 'certseg-run --help' for help.\n\nError: %s\n", kUsage, u.message.c_str());
    return 2;
  } catch (const UserError& e) {
    std::fprintf(stderr, "Error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "Error: %s\n", e.what());
    return 1;
  }
}
