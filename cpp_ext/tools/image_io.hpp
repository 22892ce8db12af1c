// certseg-run's images: PNG (libpng) and .npy in, the certified mask out as an 8-bit PNG, with the rules and
// messages of certseg_rt/io.py's read_image and write_mask.
#ifndef CERTSEG_TOOLS_IMAGE_IO_HPP
#define CERTSEG_TOOLS_IMAGE_IO_HPP

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace certseg {
namespace tools {

// An image or output the user can fix: one line, exit 1.
struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Image {
  std::size_t channels = 0, height = 0, width = 0;
  std::vector<float> data;  // float32 (channels, height, width) in [0, 1]
};

// A file -> float32 (channels, H, W) in [0, 1]: 8/16-bit gray, 8-bit RGB (RGBA and gray + alpha lose the alpha,
// `note` is told), palette PNGs as RGB; .npy (H, W), (H, W, C) or (C, H, W) of uint8, uint16 or floats in
// [0, 1].  An RGB image with equal channels is gray; colour for a 1-channel model, gray for a 3-channel one,
// 16-bit colour, NaN/Inf, values outside [0, 1] and truncated files are refused.
Image read_image(const std::string& path, std::size_t channels, const std::function<void(const std::string&)>& note);

// labels uint8 (height, width) as an 8-bit grayscale PNG, atomically (a temporary file beside it, then a rename).
void write_mask(const std::string& path, const uint8_t* labels, std::size_t height, std::size_t width);

}  // namespace tools
}  // namespace certseg

#endif
