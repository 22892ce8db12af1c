/* The statistics of the certify step (the C++ side of certseg_rt/stats.py). */
#ifndef CERTSEG_STATS_HPP
#define CERTSEG_STATS_HPP

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace certseg {

/* table[k] = P(Binom(n, tau) >= k), k = 0..n; n >= 0, 0 < tau < 1. */
std::vector<double> binomial_upper_tail(int64_t n, double tau);

enum class Correction { kHolm = 0, kBonferroni = 1 };

/* Rejections of Holm's step-down procedure over m = k.size() hypotheses with p-values table[k[i]]
 * (table non-increasing), as certseg_rt.stats.holm_reject_counts computes them. */
std::vector<uint8_t> holm_reject_counts(const int64_t* k, std::size_t m, const std::vector<double>& table,
                                        double alpha);

/* Phi^-1(q) for 0 < q < 1 (the standard normal quantile), computed as scipy.special.ndtri computes it (Cephes'
 * rational approximations, the same operations in the same order), so that sigma * normal_ppf(tau) is
 * bit for bit the radius certseg_rt.stats.certified_radius gives.  NaN outside (0, 1), -inf / inf at 0 / 1. */
double normal_ppf(double q);

/* See certseg_certify_counts in certseg.h.  Returns an empty string on success, else the error. */
std::string certify_counts(const int32_t* counts0, const int32_t* counts, std::size_t num_classes,
                           std::size_t pixels, int64_t n, double tau, double alpha, Correction correction,
                           uint8_t* labels, double* pvalues);

}  // namespace certseg

#endif
