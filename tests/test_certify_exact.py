"""CERTIFY and PREDICT from counts on hand-made cases: exact labels, p-values, fields and error messages.

Every error message is part of the interface (the CLI prints it as the one line a user sees), so the tests
pin the whole message, not a fragment.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from certseg_rt import ABSTAIN, certify_from_counts, predict_from_counts
from certseg_rt.certify import MAX_SAMPLES, Certificate, check_parameters

BASE = dict(n=5, sigma=0.25, tau=0.75, alpha=0.05)


def counts_of(*per_class):
    return np.array(per_class, np.int32)


# ---------------------------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": 0.0}, "invalid sigma=0.0: must be a finite number > 0"),
    ({"sigma": float("inf")}, "invalid sigma=inf: must be a finite number > 0"),
    ({"sigma": "0.25"}, "invalid sigma='0.25': must be a finite number > 0"),
    ({"tau": 0.5}, "invalid tau=0.5: must lie strictly between 0.5 and 1"),
    ({"tau": 1.0}, "invalid tau=1.0: must lie strictly between 0.5 and 1"),
    ({"alpha": 0.0}, "invalid alpha=0.0: must lie strictly between 0 and 1"),
    ({"alpha": 1.0}, "invalid alpha=1.0: must lie strictly between 0 and 1"),
    ({"n0": 0}, f"invalid n0=0: must be an integer in [1, {MAX_SAMPLES}] (votes are counted in int32)"),
    ({"n": MAX_SAMPLES + 1}, f"invalid n={MAX_SAMPLES + 1}: must be an integer in [1, {MAX_SAMPLES}] "
                             f"(votes are counted in int32)"),
    ({"n": 2.0}, f"invalid n=2.0: must be an integer in [1, {MAX_SAMPLES}] (votes are counted in int32)"),
    ({"correction": "none"}, "invalid correction='none': must be one of holm, bonferroni"),
    ({"seed": -1}, "invalid seed=-1: must be an integer in [0, 2**64)"),
    ({"seed": 2**64}, f"invalid seed={2**64}: must be an integer in [0, 2**64)"),
    ({"seed": 1.5}, "invalid seed=1.5: must be an integer in [0, 2**64)"),
])
def test_invalid_parameter_messages(kwargs, message):
    with pytest.raises(ValueError) as error:
        check_parameters(**kwargs)
    assert str(error.value) == message


@pytest.mark.parametrize("kwargs", [{"n": MAX_SAMPLES}, {"n0": 1}, {"seed": 2**64 - 1}, {"seed": np.uint64(3)},
                                    {"sigma": 1}, {"correction": "bonferroni"}, {}])
def test_valid_parameters_at_the_boundaries(kwargs):
    check_parameters(**kwargs)


# -------------------------------------------------------------------------------------------- the counts

@pytest.mark.parametrize("counts0, counts, n, message", [
    (np.ones((2, 1, 1)), counts_of([[5]], [[0]]), 5, "counts0 must be an integer array (C, H, W), got float64 (2, 1, 1)"),
    (counts_of([[5]], [[0]]), np.ones((2, 1, 1)), 5, "counts must be an integer array (C, H, W), got float64 (2, 1, 1)"),
    (np.zeros((2, 1), np.int32), np.zeros((2, 1), np.int32), 5,
     "counts0 must be an integer array (C, H, W), got int32 (2, 1)"),
    (np.zeros((256, 1, 1), np.int32), np.zeros((256, 1, 1), np.int32), 5,
     "counts0 has 256 classes; at most 255 (label 255 means abstain)"),
    (counts_of([[6]], [[-1]]), counts_of([[5]], [[0]]), 5, "counts0 has negative counts"),
    (counts_of([[5]], [[0]]), counts_of([[6]], [[-1]]), 5, "counts has negative counts"),
    (counts_of([[5, 4]], [[0, 0]]), counts_of([[5, 5]], [[0, 0]]), 5,
     "counts0 must count the same number of samples at every pixel"),
    (counts_of([[5]], [[0]]), counts_of([[4]], [[0]]), 5, "counts counts 4 samples per pixel but n=5"),
    (np.zeros((2, 0, 3), np.int32), np.zeros((2, 0, 3), np.int32), 1, "counts counts 0 samples per pixel but n=1"),
    (counts_of([[5]], [[0]]), counts_of([[5, 0]], [[0, 5]]), 5,
     "counts0 (2, 1, 1) and counts (2, 1, 2) must have the same shape"),
])
def test_invalid_counts_messages(counts0, counts, n, message):
    with pytest.raises(ValueError) as error:
        certify_from_counts(counts0, counts, **{**BASE, "n": n})
    assert str(error.value) == message


def test_an_unknown_correction_is_named_by_the_parameter_check():
    counts = counts_of([[5]], [[0]])
    for call in (lambda: certify_from_counts(counts, counts, **BASE, correction="bh"),
                 lambda: predict_from_counts(counts, alpha=0.05, correction="bh")):
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == "invalid correction='bh': must be one of holm, bonferroni"


def test_counts_above_int32_are_refused_and_the_largest_is_taken():
    top = np.array([[[MAX_SAMPLES]], [[0]]], np.int64)
    assert predict_from_counts(top, alpha=0.01).n == MAX_SAMPLES
    with pytest.raises(ValueError) as error:
        predict_from_counts(top + np.array([[[1]], [[0]]]), alpha=0.01)
    assert str(error.value) == f"counts has counts above {MAX_SAMPLES} (votes are counted in int32)"


def test_255_classes_and_tall_images_are_certified():
    """255 classes is the most a uint8 label with 255 = abstain can hold; height and width are not limited."""
    counts = np.zeros((255, 300, 2), np.int32)
    counts[254] = 40  # p = 0.75**40 = 1.0e-5 <= 0.05 / 600 at every pixel
    cert = certify_from_counts(counts, counts, **{**BASE, "n": 40})
    assert cert.labels.shape == (300, 2) and (cert.labels == 254).all()


# ---------------------------------------------------------------------------------------------- certify

def test_certify_from_counts_hand_computed():
    """Three pixels, n = 5, tau = 0.75, alpha = 0.05, Holm over m = 3.
    p(k) = P(Binom(5, 0.75) >= k): p(5) = 0.75**5 = 0.2373, p(4) = 0.6328.  Nothing is below 0.05 / 3,
    so all three abstain at alpha 0.05; at alpha 0.75 Holm rejects p(5) <= 0.75 / 3 = 0.25 first, then
    p(4) = 0.6328 <= 0.75 / 2 fails: only the pixel with k = 5 is certified."""
    counts0 = counts_of([[9, 0, 5]], [[1, 10, 5]])  # selection: class 0, class 1, tie -> class 0
    counts = counts_of([[5, 1, 4]], [[0, 4, 1]])  # estimation: k = 5 (class 0), 4 (class 1), 4 (class 0)
    strict = certify_from_counts(counts0, counts, **BASE)
    assert strict.labels.tolist() == [[ABSTAIN, ABSTAIN, ABSTAIN]]
    np.testing.assert_allclose(strict.pvalues, [[0.75**5, binom.sf(3, 5, 0.75), binom.sf(3, 5, 0.75)]], rtol=1e-14)
    loose = certify_from_counts(counts0, counts, **{**BASE, "alpha": 0.75})
    assert loose.labels.tolist() == [[0, ABSTAIN, ABSTAIN]] and loose.labels.dtype == np.uint8
    assert (loose.sigma, loose.tau, loose.alpha, loose.n0, loose.n, loose.correction) == (0.25, 0.75, 0.75, 10, 5,
                                                                                          "holm")
    assert loose.radius == pytest.approx(0.25 * 0.6744897501960817, rel=1e-14)
    assert loose.abstain_fraction == pytest.approx(2 / 3)


def test_certificate_summary_and_certified_pixels():
    cert = Certificate(labels=np.array([[0, 1, ABSTAIN], [1, 1, 2]], np.uint8), pvalues=np.zeros((2, 3)),
                       radius=0.1686, sigma=0.25, tau=0.75, alpha=0.001, n0=10, n=100, correction="holm", seed=4,
                       record={"backend": "b", "seconds": 1.5})
    assert cert.certified_pixels(["bg", "a", "b"]) == {"bg": 1, "a": 3, "b": 1}
    assert cert.summary(["bg", "a", "b"]) == {
        "radius": 0.1686, "abstain_fraction": 1 / 6, "sigma": 0.25, "tau": 0.75, "alpha": 0.001, "n0": 10, "n": 100,
        "seed": 4, "correction": "holm", "height": 2, "width": 3, "certified_pixels": {"bg": 1, "a": 3, "b": 1},
        "abstain_label": ABSTAIN, "backend": "b", "seconds": 1.5}
    only_abstained = Certificate(labels=np.full((1, 1), ABSTAIN, np.uint8), pvalues=np.ones((1, 1)), radius=0.1,
                                 sigma=0.25, tau=0.75, alpha=0.001, n0=1, n=1, correction="holm")
    assert only_abstained.certified_pixels(["bg"]) == {"bg": 0}
    background = Certificate(labels=np.zeros((2, 2), np.uint8), pvalues=np.zeros((2, 2)), radius=0.1, sigma=0.25,
                             tau=0.75, alpha=0.001, n0=1, n=1, correction="holm")
    assert background.certified_pixels(["bg", "a", "b"]) == {"bg": 4, "a": 0, "b": 0}  # classes never certified


# ---------------------------------------------------------------------------------------------- predict

def test_predict_from_counts_hand_computed():
    """Top two classes per pixel, two-sided p = 2 * P(X <= k_b) for X ~ Binom(k_a + k_b, 1/2), at most 1; 22 votes
    per pixel.  A: (22, 0, 0) -> p = 2 / 2**22.  B: (0, 1, 21) -> top two 21 and 1: p = 2 * (1 + 22) / 2**22.
    C: (3, 7, 12) -> top two 12 and 7 (the third class is ignored): p = 2 * P(Binom(19, 1/2) <= 7) = 0.359.
    D: (11, 11, 0) -> 2 * P(Binom(22, 1/2) <= 11) > 1, so p = 1.
    Bonferroni at 0.01 / 4 = 0.0025 keeps A (class 0) and B (class 2)."""
    counts = counts_of([[22, 0, 3, 11]], [[0, 1, 7, 11]], [[0, 21, 12, 0]])
    pred = predict_from_counts(counts, alpha=0.01, correction="bonferroni")
    expected = [2 / 2**22, 2 * 23 / 2**22, 2 * binom.cdf(7, 19, 0.5), 1.0]
    np.testing.assert_allclose(pred.pvalues, [expected], rtol=1e-12)
    assert pred.labels.tolist() == [[0, 2, ABSTAIN, ABSTAIN]] and pred.labels.dtype == np.uint8
    assert (pred.n, pred.alpha, pred.correction) == (22, 0.01, "bonferroni")


def test_predict_holm_is_the_default_and_differs_from_bonferroni():
    """A: (20, 0) -> p = 2 / 2**20 = 1.9e-6; B: (18, 2) -> p = 2 * (1 + 20 + 190) / 2**20 = 4.02e-4; alpha 0.0006.
    Bonferroni: B > 0.0006 / 2 abstains.  Holm: A <= 0.0003, then B <= 0.0006: both kept."""
    counts = counts_of([[20, 18]], [[0, 2]])
    assert predict_from_counts(counts, alpha=0.0006, correction="bonferroni").labels.tolist() == [[0, ABSTAIN]]
    holm = predict_from_counts(counts, alpha=0.0006)
    assert holm.labels.tolist() == [[0, 0]] and holm.correction == "holm"


def test_predict_one_class():
    """With one class the runner-up has no votes: p = 2 / 2**n."""
    pred = predict_from_counts(counts_of([[12, 12]]), alpha=0.01)
    np.testing.assert_allclose(pred.pvalues, [[2 / 2**12, 2 / 2**12]], rtol=1e-14)
    assert pred.labels.tolist() == [[0, 0]]
    assert predict_from_counts(counts_of([[3]]), alpha=0.01).labels.tolist() == [[ABSTAIN]]  # p = 2 / 8


def test_predict_invalid_counts_messages():
    with pytest.raises(ValueError) as error:
        predict_from_counts(np.ones((2, 1, 1)), alpha=0.01)
    assert str(error.value) == "counts must be an integer array (C, H, W), got float64 (2, 1, 1)"
    with pytest.raises(ValueError) as error:
        predict_from_counts(counts_of([[1]]), alpha=2.0)
    assert str(error.value) == "invalid alpha=2.0: must lie strictly between 0 and 1"
