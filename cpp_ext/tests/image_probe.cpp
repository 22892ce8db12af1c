// certseg-run's image reader alone (tests/test_native_runtime.py compares it with certseg_rt.io.read_image):
//   image_probe IMAGE CHANNELS OUT.f32  ->  writes the float32 (C, H, W) image, prints "C H W"; notes on stderr.
// Exit 1 with one line on stderr when the image is refused, as certseg-run does.
#include <cstdio>
#include <cstdlib>

#include "../tools/image_io.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s IMAGE CHANNELS OUT.f32\n", argv[0]);
    return 2;
  }
  try {
    const auto image = certseg::tools::read_image(argv[1], std::strtoul(argv[2], nullptr, 10), [](const std::string& m) {
      std::fprintf(stderr, "note: %s\n", m.c_str());
    });
    std::FILE* out = std::fopen(argv[3], "wb");
    if (out == nullptr || std::fwrite(image.data.data(), sizeof(float), image.data.size(), out) != image.data.size()) {
      std::fprintf(stderr, "Error: cannot write %s\n", argv[3]);
      return 1;
    }
    std::fclose(out);
    std::printf("%zu %zu %zu\n", image.channels, image.height, image.width);
  } catch (const certseg::tools::UserError& e) {
    std::fprintf(stderr, "Error: %s\n", e.what());
    return 1;
  }
  return 0;
}
