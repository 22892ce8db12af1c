// PNG through libpng (no gamma or colour transforms: the stored samples, as Pillow gives them) and .npy through a
// small reader of numpy's documented format (magic, header dict, raw C- or Fortran-order data).
#include "image_io.hpp"

#include <png.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>

namespace certseg {
namespace tools {

namespace {

constexpr std::size_t kMaxPixels = 4096u * 4096u;  // io.MAX_PIXELS

[[noreturn]] void refuse(const std::string& message) { throw UserError(message); }

std::string g3(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

std::string file_name(const std::string& path) { return std::filesystem::path(path).filename().string(); }

void check_image_size(std::size_t h, std::size_t w, const std::string& what) {
  if (w != 0 && h > kMaxPixels / w) {
    char mp[32];
    std::snprintf(mp, sizeof mp, "%.1f", static_cast<double>(h) * static_cast<double>(w) / 1e6);
    refuse(what + " is " + std::to_string(h) + "x" + std::to_string(w) + " (" + mp +
           " megapixels); certseg-rt takes images up to 16.8 megapixels (e.g. 4096x4096): downsample it to the "
           "model's input size");
  }
}

// Samples (H, W, C) in their stored type, before io.read_image's channel rules and scaling.
struct Raw {
  std::size_t height = 0, width = 0, channels = 0;
  enum Kind { kU8, kU16, kFloat } kind = kU8;
  std::vector<uint8_t> u8;
  std::vector<uint16_t> u16;
  std::vector<float> f32;
  bool alpha = false;  // the last channel is an alpha channel (RGBA / gray + alpha PNG)
  double at(std::size_t i) const { return kind == kU8 ? u8[i] : kind == kU16 ? u16[i] : f32[i]; }
};

// ---- PNG ---------------------------------------------------------------------------------------------------

struct PngError {
  char message[256];
};

void png_error_fn(png_structp png, png_const_charp msg) {
  auto* err = static_cast<PngError*>(png_get_error_ptr(png));
  std::snprintf(err->message, sizeof err->message, "%s", msg);
  png_longjmp(png, 1);
}

void png_warning_fn(png_structp, png_const_charp) {}

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};

Raw read_png(const std::string& path, std::FILE* file) {
  // Heap objects and objects not changed after setjmp: their values are defined when libpng longjmps back.
  const std::unique_ptr<Raw> out(new Raw);
  Raw& raw = *out;
  PngError err{};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_error_fn, png_warning_fn);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (png == nullptr || info == nullptr) {
    png_destroy_read_struct(&png, &info, nullptr);
    refuse("out of memory reading " + path);
  }
  const std::unique_ptr<std::vector<png_bytep>> row_pointers(new std::vector<png_bytep>);
  std::vector<png_bytep>& rows = *row_pointers;
  const std::unique_ptr<std::string> refusal_text(new std::string);
  std::string& refusal = *refusal_text;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    refuse("cannot read image " + path + ": " + err.message + " (truncated or not an image); give a PNG or .npy");
  }
  png_init_io(png, file);
  png_set_sig_bytes(png, 8);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_read_info(png, info);
  const png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
  const int depth = png_get_bit_depth(png, info), colour = png_get_color_type(png, info);
  try {
    check_image_size(height, width, "image " + path);  // before decoding the pixels
  } catch (const UserError& e) {
    refusal = e.what();
  }
  if (refusal.empty() && depth == 16 && (colour & PNG_COLOR_MASK_COLOR)) {
    refusal = path + " is a 16-bit-per-channel colour image; certseg-rt reads colour images as 8-bit RGB: convert it "
                     "to 8 bits per channel first";
  }
  if (refusal.empty() && depth == 16 && colour == PNG_COLOR_TYPE_GRAY_ALPHA) {
    refusal = path + " is a 16-bit gray + alpha image; save it without the alpha channel (16-bit gray is read at full "
                     "depth)";
  }
  if (refusal.empty() && depth == 1 && colour == PNG_COLOR_TYPE_GRAY) {
    refusal = path + " has pixel type bool (mode 1); give 8- or 16-bit integers or floats in [0, 1]";
  }
  if (!refusal.empty()) {
    png_destroy_read_struct(&png, &info, nullptr);
    refuse(refusal);
  }
  if (colour == PNG_COLOR_TYPE_PALETTE) {
    png_set_palette_to_rgb(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);  // Pillow: P with transparency -> RGBA
  }
  if (colour == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16) png_set_swap(png);  // to this (little-endian) machine's uint16
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  raw.height = height;
  raw.width = width;
  raw.channels = png_get_channels(png, info);
  raw.alpha = raw.channels == 2 || raw.channels == 4;
  const std::size_t values = static_cast<std::size_t>(height) * width * raw.channels;
  rows.resize(height);
  if (depth == 16) {
    raw.kind = Raw::kU16;
    raw.u16.resize(values);
    for (png_uint_32 y = 0; y < height; ++y) {
      rows[y] = reinterpret_cast<png_bytep>(raw.u16.data() + static_cast<std::size_t>(y) * width * raw.channels);
    }
  } else {
    raw.kind = Raw::kU8;
    raw.u8.resize(values);
    for (png_uint_32 y = 0; y < height; ++y) rows[y] = raw.u8.data() + static_cast<std::size_t>(y) * width * raw.channels;
  }
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return std::move(raw);
}

// ---- .npy --------------------------------------------------------------------------------------------------

// The value of 'key' in numpy's header dict literal, e.g. "'<f4'", "False", "(128, 128)".
std::string header_value(const std::string& header, const std::string& key) {
  const std::size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) return "";
  std::size_t v = header.find(':', k);
  if (v == std::string::npos) return "";
  ++v;
  while (v < header.size() && header[v] == ' ') ++v;
  if (v >= header.size()) return "";
  const char open = header[v];
  const char close = open == '(' ? ')' : open == '\'' ? '\'' : open == '"' ? '"' : ',';
  const std::size_t end = header.find(close, v + 1);
  if (end == std::string::npos) return close == ',' ? header.substr(v, header.find('}', v) - v) : "";
  return header.substr(v, end - v + (close == ',' ? 0 : 1));
}

float half_to_float(uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 31, mantissa = h & 1023;
  float v;
  if (exponent == 0) {
    v = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    v = mantissa ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    v = std::ldexp(static_cast<float>(mantissa + 1024), exponent - 25);
  }
  return sign ? -v : v;
}

Raw read_npy(const std::string& path, std::FILE* file) {
  auto unreadable = [&](const std::string& why) -> Raw {
    refuse("cannot read " + path + " as a numpy array (" + why + "); save it with numpy.save");
  };
  unsigned char version[2];
  if (std::fread(version, 1, 2, file) != 2) return unreadable("the header is truncated");
  std::size_t header_len = 0;
  unsigned char len[4] = {0, 0, 0, 0};
  const std::size_t len_bytes = version[0] == 1 ? 2 : 4;
  if (version[0] < 1 || version[0] > 3 || std::fread(len, 1, len_bytes, file) != len_bytes) {
    return unreadable("unknown .npy format version");
  }
  for (std::size_t i = len_bytes; i-- > 0;) header_len = header_len * 256 + len[i];
  if (header_len > 1 << 20) return unreadable("the header is too long");
  std::string header(header_len, '\0');
  if (std::fread(&header[0], 1, header_len, file) != header_len) return unreadable("the header is truncated");
  const std::string descr = header_value(header, "descr");
  const std::string fortran = header_value(header, "fortran_order");
  const std::string shape_text = header_value(header, "shape");
  if (descr.size() < 4 || shape_text.empty() || (fortran != "False" && fortran != "True")) {
    return unreadable("its header is not numpy's");
  }
  const std::string type = descr.substr(1, descr.size() - 2);  // e.g. <f4
  if (type.find('O') != std::string::npos || type.find('V') != std::string::npos || type[0] == '[') {
    return unreadable("it holds Python objects, and certseg-rt never unpickles");
  }
  std::vector<std::size_t> shape;
  for (std::size_t i = 1; i + 1 < shape_text.size();) {
    while (i < shape_text.size() && (shape_text[i] == ' ' || shape_text[i] == ',')) ++i;
    if (i + 1 >= shape_text.size()) break;
    char* end = nullptr;
    const unsigned long long d = std::strtoull(shape_text.c_str() + i, &end, 10);
    if (end == shape_text.c_str() + i) return unreadable("its shape is not numpy's");
    shape.push_back(static_cast<std::size_t>(d));
    i = static_cast<std::size_t>(end - shape_text.c_str());
  }
  std::size_t size = 1;
  for (const std::size_t d : shape) size = d != 0 && size > std::numeric_limits<std::size_t>::max() / d ? 0 : size * d;
  auto shape_repr = [&] {
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
  };
  if (size > 4 * kMaxPixels) {
    char mv[32];
    std::snprintf(mv, sizeof mv, "%.0f", static_cast<double>(size) / 1e6);
    refuse("image " + path + " has shape " + shape_repr() + " (" + mv + " million values); certseg-rt takes images up "
           "to 16.8 megapixels: downsample it");
  }
  const char order = type[0];
  const std::string code = type.substr(1);
  Raw raw;
  std::size_t item = 0;
  if (code == "u1") {
    raw.kind = Raw::kU8, item = 1;
  } else if (code == "u2") {
    raw.kind = Raw::kU16, item = 2;
  } else if (code == "f2" || code == "f4" || code == "f8") {
    raw.kind = Raw::kFloat, item = static_cast<std::size_t>(code[1] - '0');
  } else {
    static const struct { const char* code; const char* name; } kNames[] = {
        {"b1", "bool"}, {"i1", "int8"}, {"i2", "int16"}, {"i4", "int32"}, {"i8", "int64"}, {"u4", "uint32"},
        {"u8", "uint64"}, {"c8", "complex64"}, {"c16", "complex128"}};
    std::string name = code;
    for (const auto& n : kNames) {
      if (code == n.code) name = n.name;
    }
    refuse(path + " has pixel type " + name + " (mode npy); give 8- or 16-bit integers or floats in [0, 1]");
  }
  const bool swap = item > 1 && order == '>';
  std::vector<unsigned char> bytes(size * item);
  if (std::fread(bytes.data(), 1, bytes.size(), file) != bytes.size()) {
    return unreadable("the data is shorter than its header says");
  }
  if (swap) {
    for (std::size_t i = 0; i < size; ++i) std::reverse(bytes.begin() + i * item, bytes.begin() + (i + 1) * item);
  }
  // C-order positions: a Fortran-order file stores the transpose.
  std::vector<std::size_t> index(size);
  if (fortran == "True" && shape.size() > 1) {
    // Fortran position of C position c: the same multi-index with strides growing from the first axis.
    const std::size_t nd = shape.size();
    for (std::size_t c = 0; c < size; ++c) {
      std::size_t rest = c, f = 0, stride = size;
      for (std::size_t d = nd; d-- > 0;) {
        stride /= shape[d];  // the Fortran stride of axis d: the product of the axes before it
        f += (rest % shape[d]) * stride;
        rest /= shape[d];
      }
      index[f] = c;
    }
  } else {
    for (std::size_t i = 0; i < size; ++i) index[i] = i;
  }
  if (raw.kind == Raw::kU8) {
    raw.u8.resize(size);
    for (std::size_t i = 0; i < size; ++i) raw.u8[index[i]] = bytes[i];
  } else if (raw.kind == Raw::kU16) {
    raw.u16.resize(size);
    for (std::size_t i = 0; i < size; ++i) std::memcpy(&raw.u16[index[i]], &bytes[2 * i], 2);
  } else {
    raw.f32.resize(size);
    for (std::size_t i = 0; i < size; ++i) {
      float v;
      if (item == 2) {
        uint16_t h;
        std::memcpy(&h, &bytes[2 * i], 2);
        v = half_to_float(h);
      } else if (item == 4) {
        std::memcpy(&v, &bytes[4 * i], 4);
      } else {
        double d;
        std::memcpy(&d, &bytes[8 * i], 8);
        v = static_cast<float>(d);  // numpy's astype(float32): round to nearest
      }
      raw.f32[index[i]] = v;
    }
  }
  // io.read_image's layout rules: (C, H, W) with C in 1, 3, 4 and a last axis that is not -> (H, W, C).
  if (shape.size() == 3) {
    const auto is_channels = [](std::size_t d) { return d == 1 || d == 3 || d == 4; };
    if (is_channels(shape[0]) && !is_channels(shape[2])) {
      const std::size_t c = shape[0], h = shape[1], w = shape[2];
      Raw moved = raw;
      for (std::size_t k = 0; k < c; ++k) {
        for (std::size_t p = 0; p < h * w; ++p) {
          const std::size_t from = k * h * w + p, to = p * c + k;
          if (raw.kind == Raw::kU8) moved.u8[to] = raw.u8[from];
          if (raw.kind == Raw::kU16) moved.u16[to] = raw.u16[from];
          if (raw.kind == Raw::kFloat) moved.f32[to] = raw.f32[from];
        }
      }
      raw = std::move(moved);
      shape = {h, w, c};
    }
  }
  if (shape.size() == 3 && (shape[2] == 2 || shape[2] == 4)) {
    refuse("image " + path + " has " + std::to_string(shape[2]) + " channels; certseg-rt takes 1 (grayscale) or 3 "
           "(RGB), and a 4th only as the alpha of an RGBA PNG: keep the channels the model was trained on");
  }
  if (shape.size() == 3 && shape[2] == 1) shape.pop_back();
  if (shape.size() == 2) shape.push_back(1);
  if (shape.size() != 3 || (shape[2] != 1 && shape[2] != 3)) {
    refuse("image " + path + " has shape " + shape_repr() + "; expected (H, W), (H, W, 3) or (C, H, W)");
  }
  raw.height = shape[0];
  raw.width = shape[1];
  raw.channels = shape[2];
  return raw;
}

}  // namespace

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

void write_mask(const std::string& path, const uint8_t* labels, std::size_t height, std::size_t width) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  std::error_code ec;
  fs::create_directories(dir, ec);
  std::string tmp = (dir / ("." + target.filename().string() + ".XXXXXX")).string();
  const int fd = ::mkstemp(&tmp[0]);
  if (fd < 0) refuse("cannot write to " + dir.string() + ": " + std::strerror(errno) + "; choose a writable output path");
  // mkstemp makes the file private; a mask is an ordinary file (0666 less the umask), as io.atomic_path makes it.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::fchmod(fd, 0666 & ~mask);
  std::FILE* file = ::fdopen(fd, "wb");
  PngError err{};
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, png_error_fn, png_warning_fn);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  auto cleanup = [&](const std::string& why) {
    png_destroy_write_struct(&png, &info);
    if (file) std::fclose(file);
    std::remove(tmp.c_str());
    refuse("cannot write " + path + ": " + why + "; free space or choose another output path");
  };
  if (file == nullptr || png == nullptr || info == nullptr) cleanup("out of memory");
  std::vector<png_bytep> rows(height);
  if (setjmp(png_jmpbuf(png))) cleanup(err.message);
  png_init_io(png, file);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_GRAY,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (std::size_t y = 0; y < height; ++y) rows[y] = const_cast<png_bytep>(labels + y * width);
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  const bool flushed = std::fflush(file) == 0 && ::fsync(fileno(file)) == 0;
  const bool closed = std::fclose(file) == 0;
  file = nullptr;
  if (!flushed || !closed) cleanup(std::strerror(errno));
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    refuse("cannot write " + path + ": " + why + "; free space or choose another output path");
  }
}

}  // namespace tools
}  // namespace certseg
