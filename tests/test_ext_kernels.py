"""The compiled kernels (certseg_rt._ext, built from cpp_ext/) against the numpy reference.

Noise and votes must equal certseg_rt.kernels bit for bit; the certify step must take the same
decisions as certseg_rt.stats.  Skipped as a whole when the extension is not built.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

ext = pytest.importorskip(
    "certseg_rt._ext",
    reason="certseg_rt._ext is not built (pip install --no-build-isolation . compiles cpp_ext/)",
)

from certseg_rt import kernels, stats  # noqa: E402
from certseg_rt._ext_loader import EXTENSION_STATUS  # noqa: E402

# Random123's known-answer vectors for philox4x32-10 (kat_vectors): counter, key -> output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

SEEDS = [0, 1, 2**32 + 7, 2**63 + 12345, 2**64 - 1]


@pytest.fixture
def threads():
    """Restore the default thread count after a test that changes it."""
    yield ext.set_num_threads
    ext.set_num_threads(0)


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- Philox ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_philox_known_answers_extension(counter, key, expected):
    got = ext.philox4x32(np.array(counter, dtype=np.uint32), np.array(key, dtype=np.uint32))
    assert tuple(got) == expected


@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_philox_known_answers_numpy_reference(counter, key, expected):
    got = kernels.philox4x32(np.array(counter, dtype=np.uint32), np.array(key, dtype=np.uint32))
    assert tuple(int(v) for v in got) == expected


def test_noise_follows_the_contract_from_first_principles():
    # Element e of sample s: counter (e // 4, s lo, s hi, 0), key (seed lo, seed hi), Box-Muller in double.
    seed, sample, elements = 2**40 + 3, 2**33 + 5, 11
    out = np.empty((1, elements), dtype=np.float32)
    ext.gaussian_noise(seed, sample, out)
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
    for e in range(elements):
        ctr = np.array([e // 4, sample & 0xFFFFFFFF, sample >> 32, 0], dtype=np.uint32)
        r = [int(v) for v in ext.philox4x32(ctr, key)]
        u = [(v + 0.5) * 2.0**-32 for v in r]
        pair = (e % 4) // 2
        radius = math.sqrt(-2.0 * math.log(u[2 * pair]))
        angle = 2.0 * math.pi * u[2 * pair + 1]
        z = radius * (math.cos(angle) if e % 2 == 0 else math.sin(angle))
        assert out[0, e] == np.float32(z), e


# ---- noise: statistics ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def million_normals():
    out = np.empty((16, 65539), dtype=np.float32)  # 1,048,624 draws; rows are consecutive sample indices
    ext.gaussian_noise(20240917, 3, out)
    return out


def test_normals_equal_numpy_reference(million_normals):
    assert np.array_equal(million_normals, kernels.gaussian_noise(20240917, 3, 16, 65539))


def test_normals_mean_variance_tails(million_normals):
    z = million_normals.ravel().astype(np.float64)
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * math.sqrt(2.0 / n)
    p3 = 2 * sps.norm.sf(3.0)  # P(|Z| > 3)
    assert abs(np.mean(np.abs(z) > 3.0) - p3) < 5 * math.sqrt(p3 / n)


def test_normals_kolmogorov_smirnov(million_normals):
    result = sps.kstest(million_normals.ravel().astype(np.float64), "norm")
    assert result.pvalue > 1e-3, result


def test_normals_uncorrelated_between_neighbours(million_normals):
    z = million_normals.astype(np.float64)
    bound = 5 / math.sqrt(z.size)

    def corr(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    assert abs(corr(z[:-1], z[1:])) < bound  # neighbouring sample indices
    assert abs(corr(z[:, :-1], z[:, 1:])) < bound  # neighbouring elements (within and across Box-Muller pairs)
    assert abs(corr(z[:, :-4], z[:, 4:])) < bound  # same lane, neighbouring Philox blocks
    assert abs(corr(z[:, :-1] ** 2, z[:, 1:] ** 2)) < bound  # no dependence through the radius either
    other_seed = np.empty((2, 65539), dtype=np.float32)
    ext.gaussian_noise(20240918, 3, other_seed)
    assert abs(corr(z[:2], other_seed)) < 5 / math.sqrt(other_seed.size)  # neighbouring seeds


# ---- noise and noisy inputs: bit-exact against numpy -----------------------------------------------------

@pytest.mark.parametrize("shape", [(1,), (3,), (4,), (5,), (7,), (1001,), (3, 17, 19), (1, 128, 129)])
@pytest.mark.parametrize("first_sample", [0, 5, 2**32 - 2, 2**40 + 7])
def test_fill_noisy_equals_numpy(shape, first_sample):
    x = _x(shape, seed=len(shape) + shape[-1])
    seed = SEEDS[(shape[-1] + first_sample) % len(SEEDS)]
    batch = 3
    ref = kernels.fill_noisy(x, 0.25, seed, first_sample, np.empty((batch, *shape), dtype=np.float32))
    out = np.empty((batch, *shape), dtype=np.float32)
    ext.fill_noisy(x, 0.25, seed, first_sample, out)
    assert np.array_equal(out, ref)
    flat = np.empty((batch, x.size), dtype=np.float32)  # (B, E) works as well
    ext.fill_noisy(x, 0.25, seed, first_sample, flat)
    assert np.array_equal(flat, ref.reshape(batch, -1))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("elements", [1, 2, 6, 4099])
def test_gaussian_noise_equals_numpy(seed, elements):
    for first_sample in (0, 2**32 - 1, 2**64 - 4):  # crossing 2^32 inside the batch; the last samples
        out = np.empty((4, elements), dtype=np.float32)
        ext.gaussian_noise(seed, first_sample, out)
        assert np.array_equal(out, kernels.gaussian_noise(seed, first_sample, 4, elements))


def test_fill_noisy_sample_is_independent_of_its_batch():
    x = _x((2, 33))
    whole = np.empty((6, 2, 33), dtype=np.float32)
    ext.fill_noisy(x, 0.5, 99, 2**32 - 3, whole)
    for b in range(6):
        alone = np.empty((1, 2, 33), dtype=np.float32)
        ext.fill_noisy(x, 0.5, 99, 2**32 - 3 + b, alone)
        assert np.array_equal(alone[0], whole[b])


@pytest.mark.parametrize("sigma", [0.0, 0.12, 0.25, 0.5, 1.0, 3.3])
def test_fill_noisy_sigmas(sigma):
    x = _x(1003, seed=3)
    out = np.empty((2, 1003), dtype=np.float32)
    ext.fill_noisy(x, sigma, 5, 17, out)
    assert np.array_equal(out, kernels.fill_noisy(x, sigma, 5, 17, np.empty_like(out)))


@pytest.mark.parametrize("scale, shift", [(2.0, -1.0), (0.5, 0.25), (1.0, 0.1), (3.0, 0.0)])
def test_fill_noisy_affine(scale, shift):
    x = np.random.default_rng(4).random(4 * 130 + 3, dtype=np.float32)
    ref = kernels.fill_noisy(x, 0.25, 11, 2**33, np.empty((3, x.size), dtype=np.float32))
    expected = ref * np.float32(scale) + np.float32(shift)  # float32, two roundings (numpy never fuses)
    out = np.empty_like(ref)
    ext.fill_noisy(x, 0.25, 11, 2**33, out, scale=scale, shift=shift)
    assert np.array_equal(out, expected)


def test_fill_noisy_default_affine_is_exactly_the_plain_form():
    x = _x(777, seed=8)
    plain, explicit = np.empty((2, 777), dtype=np.float32), np.empty((2, 777), dtype=np.float32)
    ext.fill_noisy(x, 0.25, 3, 0, plain)
    ext.fill_noisy(x, 0.25, 3, 0, explicit, scale=1.0, shift=-0.0)
    assert np.array_equal(plain, explicit)
    assert np.array_equal(plain, kernels.fill_noisy(x, 0.25, 3, 0, np.empty_like(plain)))


def test_empty_batch_is_a_no_op():
    ext.fill_noisy(_x(10), 0.25, 0, 0, np.empty((0, 10), dtype=np.float32))
    ext.gaussian_noise(0, 0, np.empty((0, 10), dtype=np.float32))
    counts = np.ones((3, 10), dtype=np.int32)
    ext.accumulate_votes(np.empty((0, 10), dtype=np.uint8), counts)
    assert (counts == 1).all()


# ---- votes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, pixels, num_classes", [
    (1, 1, 1), (16, 128 * 128, 4), (5, 1001, 2), (32, 4099, 7), (3, 257, 256), (7, 64 * 64 + 3, 3)])
def test_accumulate_votes_equals_numpy(batch, pixels, num_classes):
    rng = np.random.default_rng(batch * pixels + num_classes)
    labels = rng.integers(0, num_classes, (batch, pixels), dtype=np.uint8)
    start = rng.integers(0, 1000, (num_classes, pixels), dtype=np.int32)
    ref = kernels.accumulate_votes(labels.reshape(batch, 1, pixels), start.copy().reshape(num_classes, 1, pixels))
    counts = start.copy()
    ext.accumulate_votes(labels, counts)
    assert np.array_equal(counts, ref.reshape(num_classes, pixels))


def test_accumulate_votes_image_shaped():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (9, 31, 45), dtype=np.uint8)
    counts = np.zeros((4, 31, 45), dtype=np.int32)
    ext.accumulate_votes(labels, counts)
    assert np.array_equal(counts, kernels.accumulate_votes(labels, np.zeros_like(counts)))
    assert (counts.sum(axis=0) == 9).all()


def test_label_out_of_range_is_reported_and_nothing_is_written():
    labels = np.zeros((4, 100), dtype=np.uint8)
    labels[2, 37] = 9
    labels[3, 99] = 5
    counts = np.full((4, 100), 7, dtype=np.int32)
    with pytest.raises(ValueError, match=r"label 9 out of range for 4 classes"):
        ext.accumulate_votes(labels, counts)
    assert (counts == 7).all()


# ---- threads --------------------------------------------------------------------------------------------

def test_results_do_not_depend_on_the_thread_count(threads):
    x = _x((3, 64, 65), seed=2)
    labels = np.random.default_rng(3).integers(0, 4, (16, 128 * 128), dtype=np.uint8)
    results = []
    for n in (1, 2):
        threads(n)
        assert ext.get_num_threads() == n
        noisy = np.empty((8, *x.shape), dtype=np.float32)
        ext.fill_noisy(x, 0.25, 2**63 + 1, 2**32 - 4, noisy)
        noise = np.empty((8, 5003), dtype=np.float32)
        ext.gaussian_noise(77, 123, noise)
        counts = np.zeros((4, 128 * 128), dtype=np.int32)
        ext.accumulate_votes(labels, counts)
        results.append((noisy, noise, counts))
    for a, b in zip(*results):
        assert np.array_equal(a, b)
    assert np.array_equal(results[0][0], kernels.fill_noisy(x, 0.25, 2**63 + 1, 2**32 - 4, np.empty_like(noisy)))


def test_thread_count_default_and_validation(threads):
    threads(0)
    assert ext.get_num_threads() >= 1
    with pytest.raises(ValueError):
        ext.set_num_threads(-1)


# ---- bad input ------------------------------------------------------------------------------------------

def _bad_noisy_calls():
    x, out = _x(10), np.zeros((2, 10), dtype=np.float32)
    read_only = np.zeros((2, 10), dtype=np.float32)
    read_only.flags.writeable = False
    return {
        "x float64": (TypeError, lambda: ext.fill_noisy(x.astype(np.float64), 0.25, 0, 0, out)),
        "out float64": (TypeError, lambda: ext.fill_noisy(x, 0.25, 0, 0, out.astype(np.float64))),
        "out float16": (TypeError, lambda: ext.fill_noisy(x, 0.25, 0, 0, out.astype(np.float16))),
        "x a list": (TypeError, lambda: ext.fill_noisy(list(x), 0.25, 0, 0, out)),
        "out read-only": (TypeError, lambda: ext.fill_noisy(x, 0.25, 0, 0, read_only)),
        "out wrong width": (ValueError, lambda: ext.fill_noisy(x, 0.25, 0, 0, np.empty((2, 11), np.float32))),
        "out 1-d": (ValueError, lambda: ext.fill_noisy(x, 0.25, 0, 0, np.empty(10, np.float32))),
        "out wrong trailing shape": (
            ValueError, lambda: ext.fill_noisy(x.reshape(2, 5), 0.25, 0, 0, np.empty((2, 5, 2), np.float32))),
        "out non-contiguous": (
            ValueError, lambda: ext.fill_noisy(x, 0.25, 0, 0, np.empty((2, 20), np.float32)[:, ::2])),
        "out Fortran order": (
            ValueError, lambda: ext.fill_noisy(x, 0.25, 0, 0, np.empty((10, 2), np.float32).T)),
        "x non-contiguous": (ValueError, lambda: ext.fill_noisy(_x(20)[::2], 0.25, 0, 0, out)),
        "negative seed": (TypeError, lambda: ext.fill_noisy(x, 0.25, -1, 0, out)),
        "seed >= 2**64": (TypeError, lambda: ext.fill_noisy(x, 0.25, 2**64, 0, out)),
        "sample index past 2**64": (ValueError, lambda: ext.fill_noisy(x, 0.25, 0, 2**64 - 1, out)),
        "noise out int32": (TypeError, lambda: ext.gaussian_noise(0, 0, np.empty((2, 10), np.int32))),
        "noise out 1-d": (ValueError, lambda: ext.gaussian_noise(0, 0, np.empty(10, np.float32))),
        "noise out non-contiguous": (
            ValueError, lambda: ext.gaussian_noise(0, 0, np.empty((4, 10), np.float32)[::2])),
    }


@pytest.mark.parametrize("case", list(_bad_noisy_calls()))
def test_bad_noise_input_raises(case):
    error, call = _bad_noisy_calls()[case]
    with pytest.raises(error):
        call()


def _bad_vote_calls():
    labels, counts = np.zeros((3, 20), dtype=np.uint8), np.zeros((4, 20), dtype=np.int32)
    return {
        "labels int32": (TypeError, lambda: ext.accumulate_votes(labels.astype(np.int32), counts)),
        "labels int8": (TypeError, lambda: ext.accumulate_votes(labels.astype(np.int8), counts)),
        "counts int64": (TypeError, lambda: ext.accumulate_votes(labels, counts.astype(np.int64))),
        "counts uint32": (TypeError, lambda: ext.accumulate_votes(labels, counts.astype(np.uint32))),
        "pixels differ": (ValueError, lambda: ext.accumulate_votes(labels, np.zeros((4, 21), np.int32))),
        "ndim differs": (ValueError, lambda: ext.accumulate_votes(labels, np.zeros((4, 4, 5), np.int32))),
        "labels 1-d": (ValueError, lambda: ext.accumulate_votes(labels[0], counts)),
        "labels non-contiguous": (
            ValueError, lambda: ext.accumulate_votes(np.zeros((3, 40), np.uint8)[:, ::2], counts)),
        "counts non-contiguous": (
            ValueError, lambda: ext.accumulate_votes(labels, np.zeros((4, 40), np.int32)[:, ::2])),
        "label >= C": (ValueError, lambda: ext.accumulate_votes(np.full((3, 20), 4, np.uint8), counts)),
    }


@pytest.mark.parametrize("case", list(_bad_vote_calls()))
def test_bad_vote_input_raises(case):
    error, call = _bad_vote_calls()[case]
    with pytest.raises(error):
        call()


def test_bad_philox_input_raises():
    with pytest.raises(ValueError):
        ext.philox4x32(np.zeros(3, np.uint32), np.zeros(2, np.uint32))
    with pytest.raises(ValueError):
        ext.philox4x32(np.zeros(4, np.uint32), np.zeros(3, np.uint32))
    with pytest.raises(TypeError):
        ext.philox4x32(np.zeros(4, np.int64), np.zeros(2, np.uint32))


def _valid_counts(num_classes=3, pixels=50, n=20):
    counts = np.zeros((num_classes, pixels), dtype=np.int32)
    counts[0] = n
    return counts


def _bad_certify_calls():
    good = _valid_counts()
    negative = good.copy()
    negative[1, 3], negative[0, 3] = -1, 21
    return {
        "correction": (ValueError, lambda: ext.certify_counts(good, good, 20, 0.75, 0.01, "sidak")),
        "counts float": (TypeError, lambda: ext.certify_counts(good, good.astype(np.float64), 20, 0.75, 0.01)),
        "counts0 int64": (TypeError, lambda: ext.certify_counts(good.astype(np.int64), good, 20, 0.75, 0.01)),
        "shapes differ": (ValueError, lambda: ext.certify_counts(good[:2], good, 20, 0.75, 0.01)),
        "counts sum != n": (ValueError, lambda: ext.certify_counts(good, good, 21, 0.75, 0.01)),
        "negative counts": (ValueError, lambda: ext.certify_counts(good, negative, 20, 0.75, 0.01)),
        "counts0 uneven": (ValueError, lambda: ext.certify_counts(np.eye(3, 50, dtype=np.int32), good, 20, 0.75, 0.01)),
        "tau 1": (ValueError, lambda: ext.certify_counts(good, good, 20, 1.0, 0.01)),
        "tau nan": (ValueError, lambda: ext.certify_counts(good, good, 20, float("nan"), 0.01)),
        "alpha 0": (ValueError, lambda: ext.certify_counts(good, good, 20, 0.75, 0.0)),
        "n 0": (ValueError, lambda: ext.certify_counts(good, good, 0, 0.75, 0.01)),
        "256 classes": (ValueError, lambda: ext.certify_counts(_valid_counts(256), _valid_counts(256), 20, 0.75, 0.01)),
        "non-contiguous": (ValueError, lambda: ext.certify_counts(good, _valid_counts(3, 100)[:, ::2], 20, 0.75, 0.01)),
    }


@pytest.mark.parametrize("case", list(_bad_certify_calls()))
def test_bad_certify_input_raises(case):
    error, call = _bad_certify_calls()[case]
    with pytest.raises(error):
        call()


# ---- certify step ---------------------------------------------------------------------------------------

def _synthetic_counts(rng, num_classes, pixels, n0, n):
    """Counts of a base model whose top-class probability varies from pixel to pixel."""
    top = rng.integers(0, num_classes, pixels)
    q = rng.uniform(0.3, 1.0, pixels)
    probs = np.full((pixels, num_classes), 0.0)
    if num_classes > 1:
        probs += ((1 - q) / (num_classes - 1))[:, None]
    probs[np.arange(pixels), top] = q
    probs /= probs.sum(axis=1, keepdims=True)
    counts0 = rng.multinomial(n0, probs).T.astype(np.int32)
    counts = rng.multinomial(n, probs).T.astype(np.int32)
    return np.ascontiguousarray(counts0), np.ascontiguousarray(counts)


def _python_certify(counts0, counts, n, tau, alpha, correction):
    candidate = np.argmax(counts0, axis=0)
    k = np.take_along_axis(counts, candidate[None], axis=0)[0]
    pvalues, reject = stats.reject_counts(k, n, tau, alpha, correction)
    return np.where(reject, candidate, 255).astype(np.uint8), pvalues


@pytest.mark.parametrize("correction", ["holm", "bonferroni"])
@pytest.mark.parametrize("n, tau, alpha", [
    (100, 0.75, 0.001), (100, 0.6, 0.05), (1000, 0.9, 0.001), (1000, 0.75, 0.01), (37, 0.55, 0.2)])
def test_certify_counts_agrees_with_python_stats(correction, n, tau, alpha):
    rng = np.random.default_rng(n + int(tau * 100) + int(alpha * 1e4))
    counts0, counts = _synthetic_counts(rng, 3, 5000, 10, n)
    labels, pvalues = ext.certify_counts(counts0, counts, n, tau, alpha, correction)
    ref_labels, ref_pvalues = _python_certify(counts0, counts, n, tau, alpha, correction)
    assert labels.dtype == np.uint8 and pvalues.dtype == np.float64 and labels.shape == (5000,)
    assert np.array_equal(labels, ref_labels)
    np.testing.assert_allclose(pvalues, ref_pvalues, rtol=1e-12, atol=0)
    if n >= 100 and alpha <= 0.01:
        assert 0 < np.sum(labels != 255) < labels.size  # the cases exercise both outcomes


def test_certify_counts_matches_certify_from_counts_on_images():
    from certseg_rt.certify import certify_from_counts

    rng = np.random.default_rng(5)
    counts0, counts = _synthetic_counts(rng, 4, 40 * 50, 10, 200)
    counts0, counts = counts0.reshape(4, 40, 50), counts.reshape(4, 40, 50)
    for correction in ("holm", "bonferroni"):
        labels, pvalues = ext.certify_counts(counts0, counts, 200, 0.75, 0.001, correction)
        cert = certify_from_counts(counts0, counts, n=200, sigma=0.25, tau=0.75, alpha=0.001, correction=correction)
        assert labels.shape == (40, 50)
        assert np.array_equal(labels, cert.labels)
        np.testing.assert_allclose(pvalues, cert.pvalues, rtol=1e-12, atol=0)


def test_certify_counts_ties_go_to_the_lowest_class():
    counts0 = np.array([[5, 0, 4], [5, 5, 3], [0, 5, 3]], dtype=np.int32)  # pixel 0: 0 = 1, pixel 1: 1 = 2
    counts = np.array([[100, 0, 100], [0, 100, 0], [0, 0, 0]], dtype=np.int32)
    labels, _ = ext.certify_counts(counts0, counts, 100, 0.75, 0.01, "holm")
    assert labels.tolist() == [0, 1, 0]


@pytest.mark.parametrize("correction", ["holm", "bonferroni"])
def test_certify_counts_holm_runs_of_equal_counts(correction):
    # Many pixels share each k: Holm's runs and their boundaries decide; compare with statsmodels too.
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    n, tau, alpha = 60, 0.6, 0.05
    k = np.repeat(np.arange(30, 61), 97)[: 3000]
    counts0 = np.zeros((2, k.size), dtype=np.int32)
    counts0[0] = 1
    counts = np.stack([k, n - k]).astype(np.int32)
    labels, pvalues = ext.certify_counts(counts0, counts, n, tau, alpha, correction)
    ref_labels, _ = _python_certify(counts0, counts, n, tau, alpha, correction)
    assert np.array_equal(labels, ref_labels)
    reject = multipletests(pvalues, alpha, method=correction)[0]
    assert np.array_equal(labels != 255, reject)
    assert 0 < reject.sum() < reject.size


@pytest.mark.parametrize("n", [1, 2, 10, 100, 1000, 10000])
@pytest.mark.parametrize("tau", [0.01, 0.5, 0.6, 0.75, 0.9, 0.99])
def test_binomial_tail_table_agrees_with_scipy(n, tau):
    # Every k = 0..n as one pixel: the p-values are the table P(Binom(n, tau) >= k).
    counts0 = np.zeros((2, n + 1), dtype=np.int32)
    counts0[0] = 1
    counts = np.stack([np.arange(n + 1), n - np.arange(n + 1)]).astype(np.int32)
    _, pvalues = ext.certify_counts(counts0, counts, n, tau, 0.05, "holm")
    ref = stats.upper_tail_table(n, tau)
    # scipy's own relative error reaches ~1e-12 in tails far below 1e-100 for n >= 1e4 (see the exact test).
    rtol = 1e-12 if n < 10000 else 5e-12
    normal = ref > 1e-300  # below, subnormal doubles have no relative precision to compare
    np.testing.assert_allclose(pvalues[normal], ref[normal], rtol=rtol, atol=0)
    assert np.all(np.abs(pvalues[~normal]) <= 1e-300)
    assert pvalues[0] == 1.0 and np.all(np.diff(pvalues) <= 0)


def test_binomial_tail_table_is_exact_to_double_precision():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    n, tau = 10000, 0.3
    counts0 = np.zeros((2, n + 1), dtype=np.int32)
    counts0[0] = 1
    counts = np.stack([np.arange(n + 1), n - np.arange(n + 1)]).astype(np.int32)
    _, pvalues = ext.certify_counts(counts0, counts, n, tau, 0.05, "holm")
    t = mpmath.mpf(tau)
    for k in (0, 1, 2900, 3000, 3100, 3500, 4217, 4619):
        term = mpmath.binomial(n, k) * t**k * (1 - t) ** (n - k)
        exact, j = term, k
        while j < n and term > exact * mpmath.mpf(10) ** -30:
            term = term * (n - j) / (j + 1) * t / (1 - t)
            exact += term
            j += 1
        assert abs(mpmath.mpf(float(pvalues[k])) - exact) <= 1e-15 * exact, k


# ---- status ---------------------------------------------------------------------------------------------

def test_loader_status():
    assert EXTENSION_STATUS["cpu"] is True
    assert EXTENSION_STATUS["cuda"] is ext.cuda_compiled()
    assert isinstance(ext.cuda_compiled(), bool)


def test_cuda_entry_points_fail_cleanly_without_a_gpu():
    if ext.cuda_device_count() > 0:
        pytest.skip("a CUDA device is present; this test is for machines without one")
    with pytest.raises((RuntimeError, ValueError)):
        ext.cuda_fill_noisy(8, 10, 0.25, 0, 0, 2, 8)
    with pytest.raises(ValueError):  # argument checks come before any CUDA call
        ext.cuda_fill_noisy(0, 10, 0.25, 0, 0, 2, 0)
