"""The statistics agree exactly with the straightforward per-pixel algorithm (scipy + statsmodels)."""
import numpy as np
import pytest
from scipy.stats import binomtest, norm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from certseg_rt import ABSTAIN, certify_from_counts
from certseg_rt import stats


def straightforward_certify(counts0, counts, n, tau, alpha, correction):
    """SegCertify as published: a Python loop of per-pixel binomial tests, then statsmodels."""
    C, H, W = counts.shape
    cand = np.zeros((H, W), int)
    pv = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            c = int(np.argmax(counts0[:, i, j]))
            cand[i, j] = c
            pv[i, j] = binomtest(int(counts[c, i, j]), n, tau, alternative="greater").pvalue
    reject = multipletests(pv.ravel(), alpha=alpha, method=correction)[0].reshape(H, W)
    return np.where(reject, cand, ABSTAIN).astype(np.uint8), pv


def random_counts(rng, C, n0, n, shape):
    # Per-pixel class probabilities from sharp to flat, so some pixels certify and some do not.
    conc = rng.choice([0.05, 0.3, 3.0], size=shape)
    probs = rng.dirichlet(np.ones(C), size=shape) ** (1 / conc[..., None])
    probs /= probs.sum(-1, keepdims=True)
    draw = lambda m: np.moveaxis(
        np.array([[rng.multinomial(m, probs[i, j]) for j in range(shape[1])] for i in range(shape[0])]), -1, 0)
    return draw(n0).astype(np.int32), draw(n).astype(np.int32)


@pytest.mark.parametrize("correction", ["holm", "bonferroni"])
@pytest.mark.parametrize("C,n,tau,alpha", [(2, 20, 0.6, 0.05), (4, 100, 0.75, 0.001), (5, 137, 0.9, 0.01),
                                           (3, 500, 0.75, 0.2), (4, 50, 0.55, 0.001)])
def test_matches_statsmodels(C, n, tau, alpha, correction):
    rng = np.random.default_rng([C, n, int(tau * 100), int(alpha * 1000)])
    for trial in range(4):
        counts0, counts = random_counts(rng, C, 10, n, (12, 13))
        cert = certify_from_counts(counts0, counts, n=n, sigma=0.25, tau=tau, alpha=alpha, correction=correction)
        labels, pv = straightforward_certify(counts0, counts, n, tau, alpha, correction)
        assert np.array_equal(cert.pvalues, pv)
        assert np.array_equal(cert.labels, labels)
        assert cert.labels.dtype == np.uint8 and cert.pvalues.dtype == np.float64


def test_matches_statsmodels_at_rejection_boundary():
    # Holm's step-down stops in the middle of the sorted p-values: the tie-grouped fast path must stop
    # at the same place.  Many pixels share each count, and the counts straddle the critical values.
    rng = np.random.default_rng(7)
    n, tau = 60, 0.75
    for alpha in (0.001, 0.01, 0.05, 0.3):
        k = rng.integers(48, 61, size=(1, 20, 20))
        counts = np.concatenate([k, n - k]).astype(np.int32)
        counts0 = np.zeros_like(counts)
        counts0[0] = 10
        for correction in ("holm", "bonferroni"):
            cert = certify_from_counts(counts0, counts, n=n, sigma=0.5, tau=tau, alpha=alpha, correction=correction)
            labels, _ = straightforward_certify(counts0, counts, n, tau, alpha, correction)
            assert np.array_equal(cert.labels, labels)
            assert 0 < (cert.labels == 0).sum() < 400 or alpha == 0.001


def test_holm_sort_based_matches_statsmodels():
    rng = np.random.default_rng(1)
    for m in (1, 5, 100, 1000):
        p = rng.uniform(0, 0.01, m) ** rng.uniform(0.5, 2)
        for alpha in (0.001, 0.05):
            assert np.array_equal(stats.holm_reject(p, alpha), multipletests(p, alpha, "holm")[0])


def test_candidate_ties_go_to_lowest_class():
    counts0 = np.zeros((3, 1, 2), np.int32)
    counts0[:, 0, 0] = [0, 5, 5]  # tie between classes 1 and 2
    counts0[:, 0, 1] = [4, 2, 4]  # tie between classes 0 and 2
    counts = np.zeros((3, 1, 2), np.int32)
    counts[1, 0, 0] = 100
    counts[0, 0, 1] = 100
    cert = certify_from_counts(counts0, counts, n=100, sigma=0.25, tau=0.75, alpha=0.001)
    assert cert.labels.tolist() == [[1, 0]]


def test_hand_computed_case():
    # n = 10, tau = 0.75: P(Binom(10, .75) >= 10) = 0.75**10 = 0.0563..., >= 9 adds 10 * 0.75**9 * 0.25.
    counts0 = np.array([[[10, 10, 0]], [[0, 0, 10]]], np.int32)
    counts = np.array([[[10, 9, 3]], [[0, 1, 7]]], np.int32)
    cert = certify_from_counts(counts0, counts, n=10, sigma=0.5, tau=0.75, alpha=0.2, correction="bonferroni")
    p10, p9 = 0.75**10, 0.75**10 + 10 * 0.75**9 * 0.25
    np.testing.assert_allclose(cert.pvalues[0, :2], [p10, p9], rtol=1e-12)
    # Bonferroni threshold 0.2 / 3 = 0.0667: only the pixel with k = 10 is certified; class 1's k = 7 is not.
    assert cert.labels.tolist() == [[0, ABSTAIN, ABSTAIN]]
    assert cert.radius == pytest.approx(0.5 * 0.6744897501960817, rel=1e-12)
    assert cert.n0 == 10 and cert.abstain_fraction == pytest.approx(2 / 3)


def test_tail_table_and_radius_are_scipy_stats_bit_for_bit():
    """The certify path takes them from scipy.special (scipy.stats is slow to import): the same numbers exactly."""
    from scipy.stats import binom

    for n in (1, 2, 7, 100, 1000, 100_000):
        for tau in (0.5 + 1e-9, 0.6, 0.75, 0.9, 0.999):
            k = np.arange(n + 1)
            assert np.array_equal(stats.upper_tail_table(n, tau), np.minimum(1.0, binom.sf(k - 1, n, tau)))
            assert stats.certified_radius(0.37, tau) == 0.37 * norm.ppf(tau)


def test_certify_path_does_not_import_scipy_stats():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from certseg_rt import certify_from_counts; "
            "c = np.zeros((2, 4, 4), np.int32); c[0] = 100; "
            "certify_from_counts(c, c, n=100, sigma=0.25, tau=0.75, alpha=0.001); "
            "print('scipy.stats' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_radius_and_clopper_pearson():
    assert stats.certified_radius(0.25, 0.75) == pytest.approx(0.25 * norm.ppf(0.75))
    k = np.array([0, 1, 50, 99, 100])
    for alpha in (0.001, 0.05):
        lower = stats.clopper_pearson_lower(k, 100, alpha)
        expected = [proportion_confint(int(kk), 100, alpha=2 * alpha, method="beta")[0] for kk in k]
        np.testing.assert_allclose(lower, expected, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("bad, message", [
    (dict(tau=0.5), "tau"), (dict(tau=1.0), "tau"), (dict(alpha=0.0), "alpha"), (dict(alpha=1.0), "alpha"),
    (dict(sigma=0.0), "sigma"), (dict(sigma=float("nan")), "sigma"), (dict(n=0), "n"),
    (dict(correction="bh"), "correction"),
])
def test_invalid_parameters_are_named(bad, message):
    counts = np.array([[[5]], [[0]]], np.int32)
    kwargs = dict(n=5, sigma=0.25, tau=0.75, alpha=0.01) | bad
    with pytest.raises(ValueError, match=message):
        certify_from_counts(counts, counts, **kwargs)


def test_inconsistent_counts_are_refused():
    c0 = np.array([[[5, 5]], [[0, 0]]], np.int32)
    with pytest.raises(ValueError, match="n=6"):
        certify_from_counts(c0, c0, n=6, sigma=0.25, tau=0.75, alpha=0.01)
    uneven = np.array([[[5, 4]], [[0, 0]]], np.int32)
    with pytest.raises(ValueError, match="same number"):
        certify_from_counts(c0, uneven, n=5, sigma=0.25, tau=0.75, alpha=0.01)
    with pytest.raises(ValueError, match="shape"):
        certify_from_counts(c0, c0[:, :, :1], n=5, sigma=0.25, tau=0.75, alpha=0.01)
