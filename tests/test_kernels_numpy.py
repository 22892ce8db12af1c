"""The numpy kernels (certseg_rt.kernels) on their own, against the noise contract written out element by element.

tests/test_ext_kernels.py compares the compiled kernels with these and is skipped where the extension is not
built; this module needs no extension, so the numpy reference is tested wherever the suite runs (and is what
the mutation run mutates).  The reference below is scalar Python: Philox4x32-10 on Python ints (checked first
against Random123's known answers), then the contract's Box-Muller with numpy's float64 functions, rounded to
float32, so the comparison is exact.
"""
from __future__ import annotations

import numpy as np
import pytest

from certseg_rt import kernels, philox4x32

MASK = 0xFFFFFFFF
RANDOM123 = [  # philox4x32-10 known-answer vectors: counter, key -> output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK,) * 4, (MASK,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def philox_reference(counter, key, rounds=10):
    """Philox4x32-R (Salmon et al. 2011) on Python ints: the round function, then the key bumped by the Weyl
    constants before every round after the first."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & MASK, (k1 + 0xBB67AE85) & MASK
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK, (p0 >> 32) ^ c3 ^ k1, p0 & MASK
    return c0, c1, c2, c3


def noise_reference(seed, sample, elements):
    """eps of one sample, element by element, as the contract in kernels.py states it."""
    out = np.empty(elements, np.float32)
    for e in range(elements):
        words = philox_reference((e // 4, sample & MASK, sample >> 32, 0), (seed & MASK, seed >> 32))
        u = [(np.float64(w) + 0.5) * 2.0**-32 for w in words]
        pair = (u[0], u[1]) if e % 4 < 2 else (u[2], u[3])
        radius, angle = np.sqrt(-2.0 * np.log(pair[0])), 2.0 * np.pi * pair[1]
        out[e] = np.float32(radius * (np.cos(angle) if e % 2 == 0 else np.sin(angle)))
    return out


@pytest.mark.parametrize("counter, key, expected", RANDOM123)
def test_reference_and_numpy_philox_reproduce_random123(counter, key, expected):
    assert philox_reference(counter, key) == expected
    got = kernels.philox4x32(np.array(counter, np.uint32), np.array(key, np.uint32))
    assert got.dtype == np.uint32 and tuple(int(v) for v in got) == expected
    public = philox4x32(list(counter), list(key))  # compiled where the extension is built, numpy otherwise
    assert public.dtype == np.uint32 and public.shape == (4,) and tuple(int(v) for v in public) == expected


def test_numpy_philox_batches_counters_and_keys():
    rng = np.random.default_rng(5)
    counters = rng.integers(0, 2**32, (6, 4), dtype=np.uint64).astype(np.uint32)
    keys = rng.integers(0, 2**32, (6, 2), dtype=np.uint64).astype(np.uint32)
    per_key = kernels.philox4x32(counters, keys)
    one_key = kernels.philox4x32(counters, keys[0])
    assert per_key.shape == (6, 4) and per_key.dtype == np.uint32
    for i in range(6):
        assert tuple(int(v) for v in per_key[i]) == philox_reference(counters[i].tolist(), keys[i].tolist())
        assert tuple(int(v) for v in one_key[i]) == philox_reference(counters[i].tolist(), keys[0].tolist())
    assert tuple(int(v) for v in kernels.philox4x32(counters[0], keys[0], rounds=7)) == philox_reference(
        counters[0].tolist(), keys[0].tolist(), rounds=7)


@pytest.mark.parametrize("counter, key", [(np.zeros(3, np.uint32), np.zeros(2, np.uint32)),
                                          (np.zeros(4, np.uint32), np.zeros(3, np.uint32))])
def test_numpy_philox_refuses_other_word_counts(counter, key):
    with pytest.raises(ValueError) as error:
        kernels.philox4x32(counter, key)
    assert str(error.value) == f"counter must end in 4 words and key in 2, got shapes {counter.shape} and {key.shape}"


@pytest.mark.parametrize("seed, first, count, elements", [(0, 0, 2, 9), (2**40 + 3, 2**32 - 1, 3, 6),
                                                          (2**64 - 1, 2**64 - 2, 2, 5), (7, 1000, 2, 1001)])
def test_gaussian_noise_is_the_contract_element_by_element(seed, first, count, elements):
    eps = kernels.gaussian_noise(seed, first, count, elements)
    assert eps.shape == (count, elements) and eps.dtype == np.float32
    for b in range(count):
        assert np.array_equal(eps[b], noise_reference(seed, first + b, elements)), (seed, first + b)


def test_gaussian_noise_edges():
    assert kernels.gaussian_noise(3, 5, 0, 8).shape == (0, 8)
    assert kernels.gaussian_noise(3, 5, 2, 0).shape == (2, 0)
    assert np.array_equal(kernels.gaussian_noise(0, 2**64 - 1, 1, 4)[0], noise_reference(0, 2**64 - 1, 4))


@pytest.mark.parametrize("call, message", [
    (lambda: kernels.gaussian_noise(0, 2**64 - 1, 2, 4),
     f"samples {2**64 - 1} .. {2**64 - 1} + 2 must lie in [0, 2**64) (sample indices are 64-bit counters)"),
    (lambda: kernels.gaussian_noise(0, -1, 1, 4), "samples -1 .. -1 + 1 must lie in [0, 2**64) "
                                                  "(sample indices are 64-bit counters)"),
    (lambda: kernels.gaussian_noise(0, 0, -1, 4), "samples 0 .. 0 + -1 must lie in [0, 2**64) "
                                                  "(sample indices are 64-bit counters)"),
    (lambda: kernels.gaussian_noise(0, 0, 1, -1), "elements must be >= 0, got -1"),
    (lambda: kernels.gaussian_noise(2**64, 0, 1, 4), f"seed must be in [0, 2**64), got {2**64}"),
    (lambda: kernels.gaussian_noise(-1, 0, 1, 4), "seed must be in [0, 2**64), got -1"),
])
def test_gaussian_noise_refusals(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


def test_fill_noisy_is_x_plus_float32_sigma_times_eps_in_float32():
    x = np.random.default_rng(1).uniform(0, 1, (2, 5, 7))  # float64 in: the contract adds in float32
    sigma = 0.3
    out = kernels.fill_noisy(x, sigma, 9, 4, np.empty((3, 2, 5, 7), np.float32))
    eps = kernels.gaussian_noise(9, 4, 3, x.size).reshape(3, 2, 5, 7)
    expected = np.float32(sigma) * eps + x.astype(np.float32)
    assert out.dtype == np.float32 and np.array_equal(out, expected)


@pytest.mark.parametrize("out, message", [
    (np.empty((2, 1, 4, 4)), "out must be float32 of shape (B, 1, 4, 4), got float64 (2, 1, 4, 4)"),
    (np.empty((2, 1, 4, 5), np.float32), "out must be float32 of shape (B, 1, 4, 4), got float32 (2, 1, 4, 5)"),
])
def test_fill_noisy_refuses_a_wrong_output(out, message):
    with pytest.raises(ValueError) as error:
        kernels.fill_noisy(np.zeros((1, 4, 4), np.float32), 0.25, 0, 0, out)
    assert str(error.value) == message


def test_accumulate_votes_hand_computed():
    labels = np.array([[[0, 2], [1, 1]], [[0, 1], [1, 2]], [[2, 2], [1, 0]]], np.uint8)  # 3 samples of 2x2
    counts = np.ones((3, 2, 2), np.int32)  # accumulates onto what is there
    kernels.accumulate_votes(labels, counts)
    # pixel (0,0) sees 0, 0, 2; (0,1) 2, 1, 2; (1,0) 1, 1, 1; (1,1) 1, 2, 0 -> per class, plus the 1 already there
    assert counts.tolist() == [[[3, 1], [1, 2]], [[1, 2], [4, 2]], [[2, 3], [1, 2]]]
    flat = np.zeros((3, 4), np.int32)  # (B, *S) for any S, as the compiled kernel takes
    kernels.accumulate_votes(labels.reshape(3, 4), flat)
    assert np.array_equal(flat.reshape(3, 2, 2) + 1, counts)


@pytest.mark.parametrize("labels, counts, error, message", [
    (np.zeros((1, 2, 2)), np.zeros((2, 2, 2), np.int32), TypeError,
     "labels must be a uint8 array, got float64 (convert it with .astype(np.uint8))"),
    (np.zeros((1, 2, 2), np.uint8), np.zeros((2, 2, 2), np.int64), TypeError,
     "counts must be a int32 array, got int64 (convert it with .astype(np.int32))"),
    ([[[0]]], np.zeros((2, 1, 1), np.int32), TypeError, "labels must be a numpy array, got list"),
    (np.zeros(4, np.uint8), np.zeros((2, 4), np.int32), ValueError,
     "labels must have at least 2 dimensions, got shape (4,)"),
    (np.zeros((1, 4, 4), np.uint8)[:, ::2], np.zeros((2, 2, 4), np.int32), ValueError,
     "labels must be C-contiguous (use np.ascontiguousarray), got shape (1, 2, 4) with non-contiguous strides"),
    (np.zeros((1, 2, 2), np.uint8), np.zeros((2, 2, 3), np.int32), ValueError,
     "labels (B, *S) and counts (C, *S) must agree after the first axis, got labels (1, 2, 2) and counts (2, 2, 3)"),
    (np.zeros((1, 2, 2), np.uint8), [[[0]]], TypeError, "counts must be a numpy array, got list"),
    (np.zeros((1, 2, 2), np.uint8), np.zeros((0, 2, 2), np.int32), ValueError, "num_classes must be in [1, 256], got 0"),
    (np.zeros((1, 1, 1), np.uint8), np.zeros((257, 1, 1), np.int32), ValueError,
     "num_classes must be in [1, 256], got 257"),
    (np.full((1, 1, 2), 2, np.uint8), np.zeros((2, 1, 2), np.int32), ValueError,
     "label 2 out of range for 2 classes: the model's output does not match the class count it declares"),
])
def test_accumulate_votes_refusals_leave_counts_unchanged(labels, counts, error, message):
    before = counts.copy()
    with pytest.raises(error) as raised:
        kernels.accumulate_votes(labels, counts)
    assert str(raised.value) == message and np.array_equal(counts, before)


def test_accumulate_votes_refuses_read_only_counts():
    counts = np.zeros((2, 1, 1), np.int32)
    counts.flags.writeable = False
    with pytest.raises(TypeError) as error:
        kernels.accumulate_votes(np.zeros((1, 1, 1), np.uint8), counts)
    assert str(error.value) == "counts must be a writable array (votes are accumulated in place)"


def test_accumulate_votes_class_count_boundaries_and_an_empty_batch():
    one = np.zeros((1, 1, 2), np.int32)  # one class: every label must be 0
    kernels.accumulate_votes(np.zeros((3, 1, 2), np.uint8), one)
    assert one.tolist() == [[[3, 3]]]
    most = np.zeros((256, 1, 1), np.int32)  # 256 classes: every uint8 label is valid
    kernels.accumulate_votes(np.array([[[255]], [[0]]], np.uint8), most)
    assert most[255, 0, 0] == 1 and most[0, 0, 0] == 1 and most.sum() == 2
    untouched = np.full((2, 2, 2), 7, np.int32)
    kernels.accumulate_votes(np.zeros((0, 2, 2), np.uint8), untouched)  # no samples: nothing added
    assert (untouched == 7).all()


@pytest.mark.parametrize("counter, key, message", [
    ([0.5, 0.9, 0, 0], [0, 0], "counter words must be integers in [0, 2**32), got [0.5, 0.9, 0, 0]"),
    ([0, 0, 0, 0], [True, 0], "key words must be integers in [0, 2**32), got [True, 0]"),
    ([0, 0, 0, 0], [0, 0, 0], "counter must be 4 uint32 words and key 2, got key of shape (3,)"),
    ([0, 0, 0], [0, 0], "counter must be 4 uint32 words and key 2, got counter of shape (3,)"),
])
def test_public_philox_refusal_messages(counter, key, message):
    with pytest.raises(ValueError) as error:
        philox4x32(counter, key)
    assert str(error.value) == message


def test_public_philox_takes_integer_arrays_of_any_integer_dtype():
    expected = kernels.philox4x32(np.array([1, 2, 3, 4], np.uint32), np.array([5, 6], np.uint32))
    for counter in (np.array([1, 2, 3, 4], np.int8), np.array([1, 2, 3, 4], np.uint64),
                    np.array([1, 2, 3, 4], dtype=object), (1, 2, 3, 4)):
        assert np.array_equal(philox4x32(counter, np.array([5, 6], np.int64)), expected)
