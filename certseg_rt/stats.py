"""Statistics on vote counts: binomial tails, multiple-testing correction, radius.

Knows nothing about models.  Every function works on whole images at once: a pixel's
p-value depends only on its count k in {0, ..., n}, so the image's p-values take at most
n + 1 distinct values and are looked up in a table instead of being computed per pixel.
"""
from __future__ import annotations

import numpy as np

CORRECTIONS = ("holm", "bonferroni")


def load_tail_functions() -> None:
    """Import what ``upper_tail_table`` and ``certified_radius`` call (scipy.special: ~0.3 s), so that the first
    certify does not (``CertifiedSegmenter.load`` runs it in a thread while the engine compiles)."""
    try:
        import scipy.special._ufuncs  # noqa: F401
    except ImportError:  # the certify step says so, in one line, where it needs scipy
        pass


def _binom_sf(k: np.ndarray, n: int, p: float) -> np.ndarray:
    """P(Binom(n, p) > k) for 0 <= k < n: the ufunc ``scipy.stats.binom.sf`` calls inside the support (Boost's
    binomial), from scipy.special.  Importing scipy.stats costs ~0.5 s of a one-shot certify process and the
    certify path needs only this and ``ndtri``; tests/test_stats.py pins it to ``binom.sf`` and ``binomtest``."""
    try:
        from scipy.special._ufuncs import _binom_sf as sf
    except ImportError:  # a later scipy moved it: the public (slower to import) route, same numbers
        from scipy.stats import binom

        return binom.sf(k, n, p)
    return sf(k, n, p)


def upper_tail_table(n: int, tau: float) -> np.ndarray:
    """table[k] = P(Binom(n, tau) >= k) for k = 0..n.

    The same numbers as ``scipy.stats.binomtest(k, n, tau, alternative="greater").pvalue``
    (which is ``binom.sf(k - 1, n, tau)`` capped at 1), bit for bit.
    """
    table = np.ones(n + 1)  # k = 0: P(X >= 0) = 1, where binom.sf(-1) is 1 by its support
    table[1:] = np.minimum(1.0, _binom_sf(np.arange(n), n, tau))
    return table


def pvalues_greater(k: np.ndarray, n: int, tau: float) -> np.ndarray:
    """One-sided exact binomial p-values of H0: p <= tau against the counts k (any shape)."""
    return upper_tail_table(n, tau)[np.asarray(k)]


def holm_reject_counts(k: np.ndarray, table: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down procedure over all entries of k, whose p-values are table[k].

    Decisions equal statsmodels' ``multipletests(table[k].ravel(), alpha, "holm")[0]``:
    sort the m p-values ascending, reject the longest prefix with p_(j) <= alpha / (m - j).
    Entries with the same k share a p-value and a run of sorted positions [s, s + c); within
    the run the bound alpha / (m - j) is tightest at j = s, so the run passes iff p <= alpha / (m - s).
    Sorting by p is sorting by k descending (the table is non-increasing), so this needs a
    bincount over n + 1 values, not a sort over m pixels.
    """
    k = np.asarray(k)
    m = k.size
    per_k = np.bincount(k.ravel(), minlength=table.size)
    passes = np.zeros(table.size, dtype=bool)
    start = 0  # sorted position of the first pixel of the current run
    for kk in range(table.size - 1, -1, -1):  # ascending p-value
        c = int(per_k[kk])
        if c == 0:
            continue
        if table[kk] > alpha / (m - start):
            break  # this run and every later one are not rejected
        passes[kk] = True
        start += c
    return passes[k]


def bonferroni_reject(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Bonferroni over all entries: reject where p <= alpha / m (statsmodels' exact comparison)."""
    pvalues = np.asarray(pvalues)
    return pvalues <= alpha / float(pvalues.size)


def reject_counts(k: np.ndarray, n: int, tau: float, alpha: float, correction: str = "holm"):
    """p-values of the counts k and which null hypotheses are rejected at family-wise level alpha."""
    table = upper_tail_table(n, tau)
    pvalues = table[k]
    if correction == "holm":
        return pvalues, holm_reject_counts(k, table, alpha)
    if correction == "bonferroni":
        return pvalues, bonferroni_reject(pvalues, alpha)
    raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")


def holm_reject(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down procedure for arbitrary p-values (sort-based), same decisions as statsmodels."""
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.ravel()
    order = np.argsort(flat, kind="stable")
    m = flat.size
    fails = flat[order] > alpha / np.arange(m, 0, -1)
    first_fail = int(np.argmax(fails)) if fails.any() else m
    reject = np.zeros(m, dtype=bool)
    reject[order[:first_fail]] = True
    return reject.reshape(p.shape)


def two_sided_pvalues_half(k_a: np.ndarray, k_b: np.ndarray) -> np.ndarray:
    """p-values of H0: p = 1/2 for k_a successes in k_a + k_b trials (exact, two-sided).

    For p = 1/2 the binomial is symmetric, so the two-sided p-value is 2 * P(X <= min(k_a, k_b)), at most 1.
    """
    from scipy.stats import binom

    total = k_a + k_b
    return np.minimum(1.0, 2.0 * binom.cdf(np.minimum(k_a, k_b), total, 0.5))


def clopper_pearson_lower(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion."""
    from scipy.stats import beta

    k = np.asarray(k)
    with np.errstate(invalid="ignore"):
        lower = beta.ppf(alpha, k, n - k + 1)
    return np.where(k == 0, 0.0, lower)


def certified_radius(sigma: float, tau: float) -> float:
    """L2 radius sigma * Phi^-1(tau) within which a pixel whose class has probability >= tau keeps it."""
    from scipy.special import ndtri  # scipy.stats.norm.ppf is ndtri

    return float(sigma * ndtri(tau))
