"""Statistics on hand-made inputs whose answers are exact binary fractions: the boundaries of Holm and
Bonferroni (a p-value equal to its threshold is rejected, as in statsmodels), table shapes, two-sided p-values."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from certseg_rt import stats


def test_bonferroni_rejects_at_equality():
    # m = 2, alpha = 0.5: threshold 0.25, exactly representable; 0.25 is rejected, 0.5 is not.
    reject = stats.bonferroni_reject(np.array([[0.25, 0.5]]), 0.5)
    assert reject.tolist() == [[True, False]]


def test_holm_rejects_at_equality_and_keeps_the_shape():
    # Sorted p: 0.25 <= 0.5 / 2 and 0.5 <= 0.5 / 1: both rejected (a strict comparison would reject neither).
    reject = stats.holm_reject(np.array([[0.5, 0.25]]), 0.5)
    assert reject.tolist() == [[True, True]] and reject.dtype == bool and reject.shape == (1, 2)


def test_holm_step_down_hand_computed():
    """Binary fractions, so that every comparison is exact.  p = (0.375, 0.125, 0.75), alpha 0.75:
    0.125 <= 0.75 / 3, 0.375 <= 0.75 / 2, 0.75 <= 0.75 / 1: all three.  With 0.5 in place of 0.375:
    0.125 passes, 0.5 > 0.375 fails and stops the step-down, so 0.75 is not rejected either."""
    assert stats.holm_reject(np.array([0.375, 0.125, 0.75]), 0.75).tolist() == [True, True, True]
    assert stats.holm_reject(np.array([0.5, 0.125, 0.75]), 0.75).tolist() == [False, True, False]


def test_holm_from_counts_rejects_at_equality_and_counts_every_k():
    """A hand-made table (k -> p): k = 2 has p = 0.25, k = 1 has 0.5, k = 0 has 1.  Two pixels with k = 2 and 1
    at alpha 0.5: 0.25 <= 0.5 / 2 and 0.5 <= 0.5 / 1, both rejected; the decisions are booleans."""
    table = np.array([1.0, 0.5, 0.25])
    reject = stats.holm_reject_counts(np.array([[2, 1]]), table, 0.5)
    assert reject.tolist() == [[True, True]] and reject.dtype == bool
    # Rejections at k = 1 (and k = 0) are reached: table (1, 0.01), both pixels k = 1, alpha 0.05.
    assert stats.holm_reject_counts(np.array([1, 1]), np.array([1.0, 0.01]), 0.05).tolist() == [True, True]
    assert stats.holm_reject_counts(np.array([0]), np.array([0.01, 0.001]), 0.05).tolist() == [True]
    # A run that fails stops the step-down: k = 1 (p 0.5) fails 0.5 / 2, so k = 0 (p 0.5) is not reached.
    assert stats.holm_reject_counts(np.array([1, 0]), np.array([0.5, 0.5]), 0.5).tolist() == [False, False]


def test_upper_tail_table_has_one_entry_per_count():
    for n, tau in ((1, 0.6), (2, 0.75), (100, 0.75)):
        table = stats.upper_tail_table(n, tau)
        assert table.shape == (n + 1,) and table[0] == 1.0
        for k in (0, n // 2, n):
            assert table[k] == binomtest(k, n, tau, alternative="greater").pvalue


def test_pvalues_greater_matches_binomtest():
    k = np.array([[0, 3], [7, 10]])
    p = stats.pvalues_greater(k, 10, 0.75)
    assert p.shape == (2, 2)
    for (i, j), kk in np.ndenumerate(k):
        assert p[i, j] == binomtest(int(kk), 10, 0.75, alternative="greater").pvalue


def test_reject_counts_defaults_to_holm_and_names_a_bad_correction():
    k = np.array([[100, 90]])
    table = stats.upper_tail_table(100, 0.75)
    alpha = 1.5 * table[90]  # Holm keeps both, Bonferroni only k = 100 (see test_guarantees)
    pvalues, default = stats.reject_counts(k, 100, 0.75, alpha)
    assert default.tolist() == [[True, True]] and pvalues.tolist() == [[table[100], table[90]]]
    assert stats.reject_counts(k, 100, 0.75, alpha, "bonferroni")[1].tolist() == [[True, False]]
    with pytest.raises(ValueError) as error:
        stats.reject_counts(k, 100, 0.75, alpha, "bh")
    assert str(error.value) == "correction must be one of ('holm', 'bonferroni'), got 'bh'"


def test_two_sided_pvalues_half_hand_computed():
    """2 * P(Binom(k_a + k_b, 1/2) <= min(k_a, k_b)), at most 1:
    (10, 0) -> 2 / 1024; (9, 1) -> 2 * 11 / 1024; (3, 3) -> 2 * P(Binom(6, 1/2) <= 3) = 2 * 42 / 64 > 1 -> 1;
    (0, 4) -> 2 / 16 (symmetric)."""
    k_a, k_b = np.array([10, 9, 3, 0]), np.array([0, 1, 3, 4])
    np.testing.assert_allclose(stats.two_sided_pvalues_half(k_a, k_b), [2 / 1024, 22 / 1024, 1.0, 2 / 16], rtol=1e-14)
