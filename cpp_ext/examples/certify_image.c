/* Certify an image from C with the native runtime (include/certseg_runtime.h).
 *
 *   certify_image ENGINE_DIR IMAGE.f32 [LABELS.u8]
 *
 * IMAGE.f32: the image as raw float32 (channels, height, width) in [0, 1], the engine's input shape
 * (numpy: image.astype("<f4").tofile("image.f32")).  Prints the certificate JSON; writes the labels
 * (uint8, 255 = abstain) to LABELS.u8 if given.  Exit 1 with one line on stderr on any error.
 */
#include <stdio.h>
#include <stdlib.h>

#include "certseg_runtime.h"

static int fail(const char* what) {
  fprintf(stderr, "Error: %s\n", what);
  return 1;
}

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    fprintf(stderr, "usage: %s ENGINE_DIR IMAGE.f32 [LABELS.u8]\n", argv[0]);
    return 2;
  }
  certseg_engine* engine = NULL;
  if (certseg_engine_open(argv[1], NULL, &engine) != CERTSEG_OK) return fail(certseg_runtime_last_error());

  size_t c, h, w;
  certseg_engine_image_shape(engine, &c, &h, &w);
  float* image = malloc(c * h * w * sizeof(float));
  unsigned char* labels = malloc(h * w);
  FILE* f = fopen(argv[2], "rb");
  size_t got = f ? fread(image, sizeof(float), c * h * w, f) : 0;
  if (f) fclose(f);
  int rc = 1;
  char* certificate = NULL;
  certseg_certify_options options;
  certseg_certify_options_init(&options); /* the defaults: n0 10, n 100, tau 0.75, alpha 0.001, Holm, seed 0 */
  if (got != c * h * w) {
    fprintf(stderr, "Error: %s must hold %zu float32 values (%zu x %zu x %zu)\n", argv[2], c * h * w, c, h, w);
  } else if (certseg_certify(engine, image, c, h, w, &options, labels, NULL, &certificate) != CERTSEG_OK) {
    fail(certseg_runtime_last_error());
  } else {
    printf("%s\n", certificate);
    rc = 0;
    if (argc == 4) {
      FILE* out = fopen(argv[3], "wb");
      if (!out || fwrite(labels, 1, h * w, out) != h * w) rc = fail("cannot write the labels");
      if (out) fclose(out);
    }
  }
  certseg_string_free(certificate);
  free(labels);
  free(image);
  certseg_engine_close(engine);
  return rc;
}
