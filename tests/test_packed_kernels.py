"""The packed kernels of the fused GPU loop on the host: the same per-element bodies and unit mapping as the CUDA
kernels (cpp_ext/include/certseg/kernels.h), so what holds here holds for the graph's kernels too.

A packed batch holds P images of m rows; row r is sample next + r % m of image r // m, keyed (seed, sample
index) as everywhere; rows at or past `end` are padding whose votes are dropped.  Checked against the plain
kernels image by image: the same noise bits, the same counts."""
import numpy as np
import pytest

from certseg_rt._ext_loader import ext

pytestmark = pytest.mark.skipif(ext is None, reason="the compiled extension is not installed")


def _images(count, shape=(2, 5, 7), seed=0):
    return np.random.default_rng(seed).random((count, *shape), dtype=np.float32)


@pytest.mark.parametrize("seed,nxt,end,rows", [(0, 0, 10, 10), (2**63 + 5, 17, 20, 4), (2**64 - 1, 2**40, 2**41, 3),
                                               (7, 2**64 - 6, 2**64 - 1, 6)])
def test_packed_noise_is_each_images_own_stream(seed, nxt, end, rows):
    x = _images(3)
    counter = np.array([seed, nxt, end], np.uint64)
    out = np.full((3 * rows, *x.shape[1:]), np.nan, np.float32)
    ext.fill_noisy_packed(x, 0.25, counter, out)
    for i in range(3):
        alone = np.empty((rows, *x.shape[1:]), np.float32)
        ext.fill_noisy(x[i], 0.25, seed, nxt, alone)
        assert np.array_equal(out[i * rows:(i + 1) * rows], alone)  # bit for bit, padding rows included
    signed = counter.view(np.int64)  # torch's int64 counter: the same bits
    again = np.empty_like(out)
    ext.fill_noisy_packed(x, 0.25, signed, again)
    assert np.array_equal(again, out)


def test_packed_noise_refuses_sample_indices_past_2_64_and_bad_shapes():
    x = _images(2)
    with pytest.raises(ValueError, match="below 2\\^64"):
        ext.fill_noisy_packed(x, 0.25, np.array([0, 2**64 - 3, 2**64 - 1], np.uint64),
                              np.empty((8, 2, 5, 7), np.float32))
    with pytest.raises(ValueError, match="multiple of x's images"):
        ext.fill_noisy_packed(x, 0.25, np.zeros(3, np.uint64), np.empty((5, 2, 5, 7), np.float32))
    with pytest.raises(ValueError, match=r"counter must have shape \(3,\)"):
        ext.fill_noisy_packed(x, 0.25, np.zeros(2, np.uint64), np.empty((4, 2, 5, 7), np.float32))
    with pytest.raises(TypeError, match="counter must be a uint64 or int64"):
        ext.fill_noisy_packed(x, 0.25, np.zeros(3, np.float64), np.empty((4, 2, 5, 7), np.float32))


@pytest.mark.parametrize("nxt,end,valid", [(100, 200, 4), (100, 102, 2), (100, 100, 0), (150, 120, 0)])
def test_packed_votes_count_each_images_valid_rows(nxt, end, valid):
    rng = np.random.default_rng(nxt + end)
    images, rows, classes = 3, 4, 5
    labels = rng.integers(0, classes, (images * rows, 6, 7), dtype=np.uint8)
    for i in range(images):  # padding rows hold garbage: never read
        labels[i * rows + valid:(i + 1) * rows] = 200
    counts = np.ones((images, classes, 6, 7), np.int32)
    ext.accumulate_votes_packed(labels, counts, np.array([9, nxt, end], np.uint64))
    for i in range(images):
        want = np.ones((classes, 6, 7), np.int32)
        if valid:
            ext.accumulate_votes(labels[i * rows:i * rows + valid], want)
        assert np.array_equal(counts[i], want)


def test_packed_votes_refuse_an_out_of_range_label_among_the_voting_rows():
    labels = np.zeros((6, 4, 4), np.uint8)
    labels[1, 2, 3] = 7  # image 0, row 1: votes
    counts = np.zeros((2, 3, 4, 4), np.int32)
    with pytest.raises(ValueError, match="label 7 out of range for 3 classes"):
        ext.accumulate_votes_packed(labels, counts, np.array([0, 0, 3], np.uint64))
    assert not counts.any()  # unchanged
    ext.accumulate_votes_packed(labels, counts, np.array([0, 0, 1], np.uint64))  # row 1 is padding now
    assert counts[:, 0].sum() == 2 * 16 and counts[:, 1:].sum() == 0
    with pytest.raises(ValueError, match="must agree"):
        ext.accumulate_votes_packed(labels, np.zeros((4, 3, 4, 4), np.int32), np.zeros(3, np.uint64))
