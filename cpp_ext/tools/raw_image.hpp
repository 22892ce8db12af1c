// The readers' shared parts (tools/image_io.cpp, png_io.cpp, npy_io.cpp): a file's samples as stored, before
// io.read_image's channel rules and scaling, and the refusals they share.
#ifndef CERTSEG_TOOLS_RAW_IMAGE_HPP
#define CERTSEG_TOOLS_RAW_IMAGE_HPP

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "image_io.hpp"

namespace certseg {
namespace tools {

constexpr std::size_t kMaxPixels = 4096u * 4096u;  // io.MAX_PIXELS

// Samples (H, W, C) in their stored type.
struct Raw {
  std::size_t height = 0, width = 0, channels = 0;
  enum Kind { kU8, kU16, kFloat } kind = kU8;
  std::vector<uint8_t> u8;
  std::vector<uint16_t> u16;
  std::vector<float> f32;
  bool alpha = false;  // the last channel is an alpha channel (RGBA / gray + alpha PNG)
  double at(std::size_t i) const { return kind == kU8 ? u8[i] : kind == kU16 ? u16[i] : f32[i]; }
};

[[noreturn]] inline void refuse(const std::string& message) { throw UserError(message); }

// io.check_image_size: at most 4096 x 4096 pixels, refused before the pixels are decoded.
void check_image_size(std::size_t height, std::size_t width, const std::string& what);

// `file` is open after the format's magic bytes (8 for PNG, 6 for .npy).
Raw read_png(const std::string& path, std::FILE* file);
Raw read_npy(const std::string& path, std::FILE* file);

}  // namespace tools
}  // namespace certseg

#endif
