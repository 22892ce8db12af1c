// certseg-run's images: certseg_rt/io.py's read_image rules on the samples png_io.cpp and npy_io.cpp read.
#include "image_io.hpp"

#include <png.h>
#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>

#include "raw_image.hpp"

namespace certseg {
namespace tools {

namespace {

std::string g3(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

std::string file_name(const std::string& path) { return std::filesystem::path(path).filename().string(); }

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};

}  // namespace

void check_image_size(std::size_t h, std::size_t w, const std::string& what) {
  if (w != 0 && h > kMaxPixels / w) {
    char mp[32];
    std::snprintf(mp, sizeof mp, "%.1f", static_cast<double>(h) * static_cast<double>(w) / 1e6);
    refuse(what + " is " + std::to_string(h) + "x" + std::to_string(w) + " (" + mp +
           " megapixels); certseg-rt takes images up to 16.8 megapixels (e.g. 4096x4096): downsample it to the "
           "model's input size");
  }
}

Image read_image(const std::string& path, std::size_t channels, const std::function<void(const std::string&)>& note) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) refuse("image " + path + " does not exist (or is not a file)");
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) refuse("cannot read image " + path + " (" + std::strerror(errno) + ")");
  unsigned char magic[8] = {0};
  const std::size_t got = std::fread(magic, 1, 8, file.get());
  const std::string lower = [&] {
    std::string s = path;
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }();
  const bool npy = lower.size() >= 4 && lower.compare(lower.size() - 4, 4, ".npy") == 0;
  Raw raw;
  if (npy) {
    if (got < 6 || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
      refuse("cannot read " + path + " as a numpy array (it is not a .npy file); save it with numpy.save");
    }
    std::fseek(file.get(), 6, SEEK_SET);
    raw = read_npy(path, file.get());
  } else if (got == 8 && png_sig_cmp(magic, 0, 8) == 0) {
    raw = read_png(path, file.get());
  } else {
    refuse("cannot read image " + path + ": certseg-run reads PNG and .npy files (the Python CLI `certseg-rt "
           "certify` also reads JPEG, TIFF, NIfTI and DICOM); convert it to PNG");
  }

  // io.read_image: drop a PNG's alpha, then the channel rules, then [0, 1].
  std::size_t c = raw.channels;
  std::vector<std::size_t> keep;  // source channel of each kept channel
  if (raw.alpha) {
    c -= 1;
    note(file_name(path) + ": alpha channel dropped (the model sees " + (c == 3 ? "RGB" : "gray") + ")");
  }
  const std::size_t pixels = raw.height * raw.width;
  if (c == 3 && channels == 1) {
    for (std::size_t p = 0; p < pixels; ++p) {
      const std::size_t i = p * raw.channels;
      if (raw.at(i) != raw.at(i + 1) || raw.at(i) != raw.at(i + 2)) {
        refuse(path + " is a colour image but the model takes 1 channel; convert it to grayscale (e.g. PIL's "
               ".convert('L')) or use a 3-channel model");
      }
    }
    c = 1;
  } else if (c == 1 && channels == 3) {
    refuse(path + " is grayscale but the model takes 3 channels (RGB); give a colour image or use a 1-channel model");
  }
  if (c == 3 && raw.kind == Raw::kU16) {
    refuse(path + " is a 16-bit colour image; the colour models take 8-bit RGB: convert it to 8 bits per channel first");
  }
  if (raw.height == 0 || raw.width == 0) refuse("image " + path + " is empty");
  check_image_size(raw.height, raw.width, "image " + path);

  Image image;
  image.channels = c;
  image.height = raw.height;
  image.width = raw.width;
  image.data.resize(c * pixels);
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  bool finite = true;
  for (std::size_t k = 0; k < c; ++k) {
    for (std::size_t p = 0; p < pixels; ++p) {
      const std::size_t i = p * raw.channels + k;
      float v;
      if (raw.kind == Raw::kU8) {
        v = static_cast<float>(raw.u8[i]) / 255.0f;  // numpy: float32 / 255.0 stays float32
      } else if (raw.kind == Raw::kU16) {
        v = static_cast<float>(raw.u16[i]) / 65535.0f;
      } else {
        v = raw.f32[i];
        finite = finite && std::isfinite(v);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
      }
      image.data[k * pixels + p] = v;
    }
  }
  if (raw.kind == Raw::kFloat) {
    if (!finite) refuse(path + " contains NaN or Inf values; clean the image before certifying");
    if (lo < 0.0f || hi > 1.0f) {
      refuse(path + " has float values in [" + g3(lo) + ", " + g3(hi) + "]; the model takes [0, 1]: rescale the image");
    }
  }
  return image;
}

}  // namespace tools
}  // namespace certseg
