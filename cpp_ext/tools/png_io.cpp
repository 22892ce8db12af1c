// PNG through libpng: no gamma or colour transforms, the stored samples as Pillow gives them; the mask out.
#include <png.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "raw_image.hpp"

namespace certseg {
namespace tools {

namespace {

struct PngError {
  char message[256];
};

void png_error_fn(png_structp png, png_const_charp msg) {
  auto* err = static_cast<PngError*>(png_get_error_ptr(png));
  std::snprintf(err->message, sizeof err->message, "%s", msg);
  png_longjmp(png, 1);
}

void png_warning_fn(png_structp, png_const_charp) {}

}  // namespace

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
