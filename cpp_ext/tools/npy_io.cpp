// .npy through a small reader of numpy's documented format: magic, header dict, raw C- or Fortran-order data.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "raw_image.hpp"

namespace certseg {
namespace tools {

namespace {

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

}  // namespace

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


}  // namespace tools
}  // namespace certseg
