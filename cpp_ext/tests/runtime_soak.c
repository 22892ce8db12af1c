/* Memory check of the native runtime (tests/test_native_runtime.py): open an engine, certify the same image
 * COUNT times in one process, and print the resident set size (from /proc/self/statm) after the first
 * WARMUP certifies and after all of them, plus whether every certificate equalled the first.  Engines are
 * also opened and closed a few times, so a leak in open/close shows too.
 *
 *   runtime_soak ENGINE_DIR IMAGE.f32 COUNT WARMUP N0 N
 * prints: warm_rss_kb <kb> final_rss_kb <kb> identical <0|1>
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "certseg_runtime.h"

static long rss_kb(void) {
  long pages = 0, resident = 0;
  FILE* f = fopen("/proc/self/statm", "r");
  if (f == NULL || fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
  if (f) fclose(f);
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(int argc, char** argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: %s ENGINE_DIR IMAGE.f32 COUNT WARMUP N0 N\n", argv[0]);
    return 2;
  }
  const int count = atoi(argv[3]), warmup = atoi(argv[4]);
  certseg_certify_options opt;
  certseg_certify_options_init(&opt);
  opt.n0 = atoi(argv[5]);
  opt.n = atoi(argv[6]);
  certseg_engine* engine = NULL;
  for (int round = 0; round < 3; ++round) { /* open / close cycles before the measured engine */
    if (certseg_engine_open(argv[1], NULL, &engine) != CERTSEG_OK) {
      fprintf(stderr, "Error: %s\n", certseg_runtime_last_error());
      return 1;
    }
    if (round < 2) certseg_engine_close(engine);
  }
  size_t c, h, w;
  certseg_engine_image_shape(engine, &c, &h, &w);
  float* image = malloc(c * h * w * sizeof(float));
  unsigned char* labels = malloc(h * w);
  FILE* f = fopen(argv[2], "rb");
  if (f == NULL || fread(image, sizeof(float), c * h * w, f) != c * h * w) {
    fprintf(stderr, "Error: cannot read %s\n", argv[2]);
    return 1;
  }
  fclose(f);
  char* first = NULL;
  int identical = 1;
  long warm = 0;
  for (int i = 0; i < count; ++i) {
    char* cert = NULL;
    if (certseg_certify(engine, image, c, h, w, &opt, labels, NULL, &cert) != CERTSEG_OK) {
      fprintf(stderr, "Error: %s\n", certseg_runtime_last_error());
      return 1;
    }
    /* Certificates differ only in their timing: compare up to the "seconds" field. */
    const char* cut = strstr(cert, "\"seconds\"");
    if (first == NULL) {
      first = cert;
    } else {
      identical = identical && cut != NULL && strncmp(first, cert, (size_t)(cut - cert)) == 0;
      certseg_string_free(cert);
    }
    if (i + 1 == warmup) warm = rss_kb();
  }
  printf("warm_rss_kb %ld final_rss_kb %ld identical %d\n", warm, rss_kb(), identical);
  certseg_string_free(first);
  free(labels);
  free(image);
  certseg_engine_close(engine);
  return 0;
}
