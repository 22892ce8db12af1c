// The certify step's statistics: binomial upper tails, Holm / Bonferroni, candidates from counts.
// Decisions follow certseg_rt/stats.py (upper_tail_table, holm_reject_counts, bonferroni_reject).
#include "certseg/stats.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace certseg {
namespace {

std::string fmt(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

std::vector<double> binomial_upper_tail(int64_t n, double tau) {
  // pmf up to a constant factor by the ratio recurrence
  //   pmf(j + 1) / pmf(j) = (n - j) / (j + 1) * tau / (1 - tau),
  // started at the mode (set to 1, the largest term, so nothing overflows), then normalised by the
  // sum of all terms.  No lgamma: the relative error of a term grows by a few long-double roundings
  // per step away from the mode, so it stays near n * 1e-19; tails are summed smallest term first.
  // Terms below long double's range (~1e-4951) become 0; so do their tails in double.
  std::vector<double> table(static_cast<std::size_t>(n) + 1);
  table[0] = 1.0;
  if (n == 0) return table;
  const std::size_t size = static_cast<std::size_t>(n) + 1;
  std::vector<long double> term(size, 0.0L);
  const long double t = tau;
  const long double odds = t / (1.0L - t);
  int64_t mode = static_cast<int64_t>(std::floor(static_cast<long double>(n + 1) * t));
  mode = std::min<int64_t>(std::max<int64_t>(mode, 0), n);
  term[mode] = 1.0L;
  for (int64_t j = mode; j < n; ++j) {  // upwards
    term[j + 1] = term[j] * (static_cast<long double>(n - j) * odds / static_cast<long double>(j + 1));
  }
  for (int64_t j = mode; j > 0; --j) {  // downwards
    term[j - 1] = term[j] * (static_cast<long double>(j) / (static_cast<long double>(n - j + 1) * odds));
  }
  std::vector<long double> tail(size);
  long double sum = 0.0L;
  for (int64_t j = n; j >= 0; --j) {
    sum += term[j];
    tail[j] = sum;
  }
  const long double total = sum;
  for (int64_t k = 1; k <= n; ++k) {
    const long double p = tail[k] / total;
    table[k] = p < 1.0L ? static_cast<double>(p) : 1.0;
  }
  return table;
}

namespace {

// Coefficients of the rational approximations of Cephes' ndtri (S. L. Moshier, Cephes Math Library 2.1,
// as scipy.special.ndtri uses them); highest power first.  The denominators' leading 1 is implicit.
// Central region |q - 0.5| <= 0.5 - exp(-2): x / sqrt(2 pi) = w + w^3 P0(w^2) / Q0(w^2), w = q - 0.5.
constexpr double kP0[5] = {-5.99633501014107895267E1, 9.80010754185999661536E1, -5.66762857469070293439E1,
                           1.39312609387279679503E1, -1.23916583867381258016E0};
constexpr double kQ0[8] = {1.95448858338141759834E0,  4.67627912898881538453E0, 8.63602421390890590575E1,
                           -2.25462687854119370527E2, 2.00260212380060660359E2, -8.20372256168333339912E1,
                           1.59056225126211695515E1,  -1.18331621121330003142E0};
// Tails, z = sqrt(-2 ln y) in [2, 8): x = z - ln(z) / z - (1 / z) P1(1 / z) / Q1(1 / z).
constexpr double kP1[9] = {4.05544892305962419923E0,   3.15251094599893866154E1,  5.71628192246421288162E1,
                           4.40805073893200834700E1,   1.46849561928858024014E1,  2.18663306850790267539E0,
                           -1.40256079171354495875E-1, -3.50424626827848203418E-2, -8.57456785154685413611E-4};
constexpr double kQ1[8] = {1.57799883256466749731E1,   4.53907635128879210584E1,  4.13172038254672030440E1,
                           1.50425385692907503408E1,   2.50464946208309415979E0,  -1.42182922854787788574E-1,
                           -3.80806407691578277194E-2, -9.33259480895457427372E-4};
// z in [8, 64).
constexpr double kP2[9] = {3.23774891776946035970E0,  6.91522889068984211695E0,  3.93881025292474443415E0,
                           1.33303460815807542389E0,  2.01485389549179081538E-1, 1.23716634817820021358E-2,
                           3.01581553508235416007E-4, 2.65806974686737550832E-6, 6.23974539184983293730E-9};
constexpr double kQ2[8] = {6.02427039364742014255E0,  3.67983563856160859403E0,  1.37702099489081330271E0,
                           2.16236993594496635890E-1, 1.34204006088543189037E-2, 3.28014464682127739104E-4,
                           2.89247864745380683936E-6, 6.79019408009981274425E-9};
constexpr double kSqrt2Pi = 2.50662827463100050242E0;
constexpr double kExpMinus2 = 0.13533528323661269189;

// Horner's rule, a multiply then an add per step (this file is compiled with -ffp-contract=off, as scipy's
// portable x86-64 build has no FMA): the same roundings as Cephes' polevl / p1evl.
template <std::size_t N>
double horner(double x, const double (&c)[N]) {
  double acc = c[0];
  for (std::size_t i = 1; i < N; ++i) acc = acc * x + c[i];
  return acc;
}
template <std::size_t N>
double horner_monic(double x, const double (&c)[N]) {  // leading coefficient 1, then c
  double acc = x + c[0];
  for (std::size_t i = 1; i < N; ++i) acc = acc * x + c[i];
  return acc;
}

}  // namespace

double normal_ppf(double q) {
  if (q == 0.0) return -HUGE_VAL;
  if (q == 1.0) return HUGE_VAL;
  if (!(q > 0.0 && q < 1.0)) return std::nan("");
  bool lower = true;  // q in the lower half: the result is negative
  double y = q;
  if (y > 1.0 - kExpMinus2) {
    y = 1.0 - y;
    lower = false;
  }
  if (y > kExpMinus2) {
    const double w = y - 0.5;
    const double w2 = w * w;
    const double x = w + w * (w2 * horner(w2, kP0) / horner_monic(w2, kQ0));
    return x * kSqrt2Pi;
  }
  const double z = std::sqrt(-2.0 * std::log(y));
  const double x0 = z - std::log(z) / z;
  const double r = 1.0 / z;
  const double x1 = z < 8.0 ? r * horner(r, kP1) / horner_monic(r, kQ1) : r * horner(r, kP2) / horner_monic(r, kQ2);
  const double x = x0 - x1;
  return lower ? -x : x;
}

std::vector<uint8_t> holm_reject_counts(const int64_t* k, std::size_t m, const std::vector<double>& table,
                                        double alpha) {
  // Sorting the p-values ascending is sorting k descending (the table does not increase), and pixels
  // with the same k form a run [start, start + c) of sorted positions; Holm's bound alpha / (m - j) is
  // tightest at the run's first position, so the run is rejected iff table[k] <= alpha / (m - start).
  std::vector<int64_t> per_k(table.size(), 0);
  for (std::size_t i = 0; i < m; ++i) per_k[static_cast<std::size_t>(k[i])] += 1;
  std::vector<uint8_t> passes(table.size(), 0);
  std::size_t start = 0;
  for (std::size_t kk = table.size(); kk-- > 0;) {
    const int64_t c = per_k[kk];
    if (c == 0) continue;
    if (table[kk] > alpha / static_cast<double>(m - start)) break;
    passes[kk] = 1;
    start += static_cast<std::size_t>(c);
  }
  std::vector<uint8_t> reject(m);
  for (std::size_t i = 0; i < m; ++i) reject[i] = passes[static_cast<std::size_t>(k[i])];
  return reject;
}

namespace {

// Non-negative counts with the same total at every pixel; returns "" or an error, and the total.
std::string check_counts(const char* name, const int32_t* counts, std::size_t num_classes, std::size_t pixels,
                         int64_t* total) {
  *total = -1;
  for (std::size_t p = 0; p < pixels; ++p) {
    int64_t sum = 0;
    for (std::size_t c = 0; c < num_classes; ++c) {
      const int32_t v = counts[c * pixels + p];
      if (v < 0) {
        return std::string(name) + " has negative counts (" + std::to_string(v) + " at class " + std::to_string(c) +
               ", pixel " + std::to_string(p) + ")";
      }
      sum += v;
    }
    if (p == 0) {
      *total = sum;
    } else if (sum != *total) {
      return std::string(name) + " must count the same number of samples at every pixel (pixel 0 has " +
             std::to_string(*total) + ", pixel " + std::to_string(p) + " has " + std::to_string(sum) + ")";
    }
  }
  return "";
}

}  // namespace

std::string certify_counts(const int32_t* counts0, const int32_t* counts, std::size_t num_classes,
                           std::size_t pixels, int64_t n, double tau, double alpha, Correction correction,
                           uint8_t* labels, double* pvalues) {
  if (num_classes < 1 || num_classes > 255) {
    return "num_classes must be in [1, 255] (255 is the abstain label), got " + std::to_string(num_classes);
  }
  if (n < 1) return "n must be >= 1, got " + std::to_string(n);
  if (!(tau > 0.0 && tau < 1.0)) return "tau must lie strictly between 0 and 1, got " + fmt(tau);
  if (!(alpha > 0.0 && alpha < 1.0)) return "alpha must lie strictly between 0 and 1, got " + fmt(alpha);
  if (correction != Correction::kHolm && correction != Correction::kBonferroni) {
    return "correction must be HOLM (0) or BONFERRONI (1), got " + std::to_string(static_cast<int>(correction));
  }
  int64_t total0 = 0, total = 0;
  std::string err = check_counts("counts0", counts0, num_classes, pixels, &total0);
  if (!err.empty()) return err;
  err = check_counts("counts", counts, num_classes, pixels, &total);
  if (!err.empty()) return err;
  if (pixels > 0 && total != n) {
    return "counts counts " + std::to_string(total) + " samples per pixel but n=" + std::to_string(n);
  }

  std::vector<int64_t> k(pixels);
  for (std::size_t p = 0; p < pixels; ++p) {
    std::size_t best = 0;  // argmax, first maximum: ties go to the lowest class
    for (std::size_t c = 1; c < num_classes; ++c) {
      if (counts0[c * pixels + p] > counts0[best * pixels + p]) best = c;
    }
    labels[p] = static_cast<uint8_t>(best);
    k[p] = counts[best * pixels + p];
  }
  const std::vector<double> table = binomial_upper_tail(n, tau);
  if (pvalues != nullptr) {
    for (std::size_t p = 0; p < pixels; ++p) pvalues[p] = table[static_cast<std::size_t>(k[p])];
  }
  if (correction == Correction::kHolm) {
    const std::vector<uint8_t> reject = holm_reject_counts(k.data(), pixels, table, alpha);
    for (std::size_t p = 0; p < pixels; ++p) {
      if (!reject[p]) labels[p] = 255;
    }
  } else {
    const double bound = alpha / static_cast<double>(pixels);
    for (std::size_t p = 0; p < pixels; ++p) {
      if (!(table[static_cast<std::size_t>(k[p])] <= bound)) labels[p] = 255;
    }
  }
  return "";
}

}  // namespace certseg
