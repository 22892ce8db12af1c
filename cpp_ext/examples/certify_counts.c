/* certify_counts: the certify step through the C API, without Python.
 *
 * Simulates a base segmenter on a synthetic image: every pixel has a "true" class and a
 * probability q of outputting it under noise (otherwise another class).  Label maps of
 * batches of samples are counted with certseg_accumulate_votes (n0 selection samples, then n
 * estimation samples), and certseg_certify_counts turns the counts into certified labels
 * (255 = abstain) and p-values.  Deterministic: the draws come from a fixed 64-bit LCG.
 *
 *   certify_counts [--classes C] [--pixels P] [--n0 N0] [--n N] [--tau T] [--alpha A]
 *                  [--correction holm|bonferroni] [--seed S] [--table] [--dump]
 *
 * Output (stdout, one "key value" item per line):
 *   certified <count> / abstained <count> / class <c> <certified pixels of class c>
 *   --table: "table <k> <P(Binom(n, tau) >= k)>" for k = 0..n
 *   --dump:  "pixel <p> counts0 <C ints> counts <C ints> label <label> pvalue <p-value>"
 * Exit status 0, 1 on a C API error (message on stderr), 2 on a usage error.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certseg.h"

static uint64_t lcg_state;

static uint32_t lcg_next(void) {  /* Knuth's MMIX LCG, upper 32 bits */
  lcg_state = lcg_state * 6364136223846793005ULL + 1442695040888963407ULL;
  return (uint32_t)(lcg_state >> 32);
}

static double lcg_uniform(void) { return lcg_next() * (1.0 / 4294967296.0); }

static int usage(const char* message) {
  fprintf(stderr, "certify_counts: %s\n", message);
  fprintf(stderr,
          "usage: certify_counts [--classes C] [--pixels P] [--n0 N0] [--n N] [--tau T] [--alpha A]\n"
          "                      [--correction holm|bonferroni] [--seed S] [--table] [--dump]\n");
  return 2;
}

/* Labels of `batch` samples of the synthetic model: true class with probability q[p], else another. */
static void sample_labels(const uint8_t* truth, const double* q, size_t pixels, size_t classes, size_t batch,
                          uint8_t* labels) {
  size_t b, p;
  for (b = 0; b < batch; ++b) {
    for (p = 0; p < pixels; ++p) {
      uint8_t label = truth[p];
      if (lcg_uniform() >= q[p] && classes > 1) {
        label = (uint8_t)((truth[p] + 1 + lcg_next() % (classes - 1)) % classes);
      }
      labels[b * pixels + p] = label;
    }
  }
}

/* counts (classes, pixels) of `total` samples, counted in batches of up to 16. */
static int count_votes(const uint8_t* truth, const double* q, size_t pixels, size_t classes, long total,
                       int32_t* counts, uint8_t* labels) {
  const long batch_max = 16;
  long done;
  memset(counts, 0, classes * pixels * sizeof(int32_t));
  for (done = 0; done < total; done += batch_max) {
    const size_t batch = (size_t)(total - done < batch_max ? total - done : batch_max);
    sample_labels(truth, q, pixels, classes, batch, labels);
    if (certseg_accumulate_votes(labels, batch, pixels, counts, classes) != CERTSEG_OK) {
      fprintf(stderr, "certify_counts: certseg_accumulate_votes: %s\n", certseg_last_error());
      return 1;
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  long classes = 4, pixels = 64 * 64, n0 = 10, n = 100;
  double tau = 0.75, alpha = 0.001;
  unsigned long long seed = 1;
  certseg_correction correction = CERTSEG_HOLM;
  int dump = 0, table = 0, i, rc = 0;
  size_t p, c;
  uint8_t *truth, *labels, *batch_labels;
  double *q, *pvalues, *tail;
  int32_t *counts0, *counts;
  long certified = 0, per_class[256] = {0};
  const uint32_t zero_ctr[4] = {0, 0, 0, 0}, zero_key[2] = {0, 0};
  uint32_t kat[4];

  for (i = 1; i < argc; ++i) {
    const char* arg = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(arg, "--dump") == 0) { dump = 1; continue; }
    if (strcmp(arg, "--table") == 0) { table = 1; continue; }
    if (value == NULL) return usage("missing value or unknown option");
    ++i;
    if (strcmp(arg, "--classes") == 0) classes = strtol(value, NULL, 10);
    else if (strcmp(arg, "--pixels") == 0) pixels = strtol(value, NULL, 10);
    else if (strcmp(arg, "--n0") == 0) n0 = strtol(value, NULL, 10);
    else if (strcmp(arg, "--n") == 0) n = strtol(value, NULL, 10);
    else if (strcmp(arg, "--tau") == 0) tau = strtod(value, NULL);
    else if (strcmp(arg, "--alpha") == 0) alpha = strtod(value, NULL);
    else if (strcmp(arg, "--seed") == 0) seed = strtoull(value, NULL, 10);
    else if (strcmp(arg, "--correction") == 0) {
      if (strcmp(value, "holm") == 0) correction = CERTSEG_HOLM;
      else if (strcmp(value, "bonferroni") == 0) correction = CERTSEG_BONFERRONI;
      else return usage("--correction must be holm or bonferroni");
    } else {
      return usage("unknown option");
    }
  }
  if (classes < 1 || classes > 255) return usage("--classes must be in [1, 255]");
  if (pixels < 1 || n0 < 1 || n < 1) return usage("--pixels, --n0 and --n must be >= 1");

  truth = malloc((size_t)pixels);
  q = malloc((size_t)pixels * sizeof(double));
  labels = malloc((size_t)pixels);
  batch_labels = malloc((size_t)pixels * 16);
  pvalues = malloc((size_t)pixels * sizeof(double));
  tail = malloc(((size_t)n + 1) * sizeof(double));
  counts0 = malloc((size_t)(classes * pixels) * sizeof(int32_t));
  counts = malloc((size_t)(classes * pixels) * sizeof(int32_t));
  if (!truth || !q || !labels || !batch_labels || !pvalues || !tail || !counts0 || !counts) {
    fprintf(stderr, "certify_counts: out of memory\n");
    return 1;
  }

  /* The synthetic image: classes in bands of 13 pixels, q uniform in [0.4, 1). */
  lcg_state = seed;
  for (p = 0; p < (size_t)pixels; ++p) {
    truth[p] = (uint8_t)((p / 13) % (size_t)classes);
    q[p] = 0.4 + 0.6 * lcg_uniform();
  }
  if (count_votes(truth, q, (size_t)pixels, (size_t)classes, n0, counts0, batch_labels) ||
      count_votes(truth, q, (size_t)pixels, (size_t)classes, n, counts, batch_labels)) {
    rc = 1;
    goto done;
  }

  if (certseg_certify_counts(counts0, counts, (size_t)classes, (size_t)pixels, n, tau, alpha, correction, labels,
                             pvalues) != CERTSEG_OK) {
    fprintf(stderr, "certify_counts: certseg_certify_counts: %s\n", certseg_last_error());
    rc = 1;
    goto done;
  }

  certseg_philox4x32(zero_ctr, zero_key, kat);
  printf("# certseg certify_counts: classes %ld pixels %ld n0 %ld n %ld tau %.17g alpha %.17g correction %s "
         "seed %llu\n",
         classes, pixels, n0, n, tau, alpha, correction == CERTSEG_HOLM ? "holm" : "bonferroni", seed);
  printf("# philox4x32-10 of zero counter and key: %08x %08x %08x %08x (Random123: 6627e8d5 e169c58d bc57ac4c "
         "9b00dbd8)\n",
         kat[0], kat[1], kat[2], kat[3]);
  for (p = 0; p < (size_t)pixels; ++p) {
    if (labels[p] != CERTSEG_ABSTAIN) {
      ++certified;
      ++per_class[labels[p]];
    }
  }
  printf("certified %ld\n", certified);
  printf("abstained %ld\n", pixels - certified);
  for (c = 0; c < (size_t)classes; ++c) printf("class %zu %ld\n", c, per_class[c]);

  if (table) {
    long k;
    if (certseg_binomial_upper_tail(n, tau, tail) != CERTSEG_OK) {
      fprintf(stderr, "certify_counts: certseg_binomial_upper_tail: %s\n", certseg_last_error());
      rc = 1;
      goto done;
    }
    for (k = 0; k <= n; ++k) printf("table %ld %.17g\n", k, tail[k]);
  }
  if (dump) {
    for (p = 0; p < (size_t)pixels; ++p) {
      printf("pixel %zu counts0", p);
      for (c = 0; c < (size_t)classes; ++c) printf(" %d", counts0[c * (size_t)pixels + p]);
      printf(" counts");
      for (c = 0; c < (size_t)classes; ++c) printf(" %d", counts[c * (size_t)pixels + p]);
      printf(" label %d pvalue %.17g\n", labels[p], pvalues[p]);
    }
  }

done:
  free(truth);
  free(q);
  free(labels);
  free(batch_labels);
  free(pvalues);
  free(tail);
  free(counts0);
  free(counts);
  return rc;
}
