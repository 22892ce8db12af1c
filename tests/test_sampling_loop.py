"""The runtime's sampling loop (runtime/sampling.py): which images it takes, with which message it refuses the
others (the one line a user sees), and what GraphBackend.sample_counts does with channels, size multiples,
batches and progress."""
from __future__ import annotations

import numpy as np
import pytest

from certseg_rt import kernels
from certseg_rt.errors import InputError
from certseg_rt.runtime.sampling import GraphBackend, check_input


@pytest.mark.parametrize("x, channels, multiple, message", [
    (np.zeros((4, 4), np.float32), 3, 1, "image has shape (4, 4); the model takes (3, H, W)"),
    (np.zeros((2, 4, 4), np.float32), 1, 1, "image has shape (2, 4, 4); the model takes (1, H, W)"),
    (np.zeros((1, 0, 4), np.float32), 1, 1, "image is empty (shape (1, 0, 4))"),
    (np.zeros((1, 4, 0), np.float32), 1, 1, "image is empty (shape (1, 4, 0))"),
    (np.broadcast_to(np.float32(0.5), (1, 4000, 5000)), 1, 1,
     "image is 4000x5000 (20.0 megapixels); certseg-rt takes images up to 16.8 megapixels (e.g. 4096x4096): "
     "downsample it to the model's input size"),
    (np.zeros((1, 12, 16), np.float32), 1, 8, "image is 12x16; the model needs height and width that are multiples "
                                              "of 8 (resize or pad the image)"),
    (np.zeros((1, 16, 12), np.float32), 1, 8, "image is 16x12; the model needs height and width that are multiples "
                                              "of 8 (resize or pad the image)"),
    (np.zeros((1, 4, 4), np.int32), 1, 1, "image dtype is int32; give float values in [0, 1] (io.read_image "
                                          "converts files)"),
    (np.array([[[0.5, np.nan]]], np.float32), 1, 1, "image contains NaN or Inf values; clean or re-export the image"),
    (np.array([[[-0.25, 0.5]]], np.float32), 1, 1, "image values lie in [-0.25, 0.5]; the model takes [0, 1]: "
                                                   "rescale the image"),
    (np.array([[[0.5, 1.5]]], np.float32), 1, 1, "image values lie in [0.5, 1.5]; the model takes [0, 1]: "
                                                 "rescale the image"),
])
def test_check_input_refusals(x, channels, multiple, message):
    with pytest.raises(InputError) as error:
        check_input(x, channels, multiple)
    assert str(error.value) == message


def test_check_input_accepts_the_closed_unit_range_and_returns_float32():
    x = np.array([[[0.0, 1.0, 0.3]]])  # float64, values exactly 0 and 1
    y = check_input(x, 1)
    assert y.dtype == np.float32 and y.flags.c_contiguous and np.array_equal(y, x.astype(np.float32))
    assert check_input(np.zeros((3, 5), np.float32), 1).shape == (1, 3, 5)  # 2-D for a one-channel model
    assert check_input(np.zeros((1, 1, 7), np.float16), 1).shape == (1, 1, 7)  # one row is not empty
    assert check_input(np.zeros((3, 3, 5), np.float32), 3).shape == (3, 3, 5)  # any size by default
    assert check_input(np.zeros((1, 16, 24), np.float32), 1, 8).shape == (1, 16, 24)


class Threshold(GraphBackend):
    """Class 1 where the noisy first channel exceeds 0.5; the batches it is given are kept."""

    name = "threshold"

    def __init__(self, channels=1, size_multiple=1, batch_size=4):
        super().__init__(sigma=0.5, num_classes=2, channels=channels, size_multiple=size_multiple,
                         batch_size=batch_size)
        self.batches = []

    def infer(self, x_noisy):
        self.batches.append(len(x_noisy))
        return (x_noisy[:, 0] > 0.5).astype(np.uint8)


def test_sample_counts_are_the_votes_of_the_keyed_noise():
    x = np.random.default_rng(2).uniform(0, 1, (3, 4, 5)).astype(np.float32)  # three channels
    backend = Threshold(channels=3, batch_size=4)
    done = []
    backend.progress = done.append
    counts = backend.sample_counts(x, 10, seed=6, offset=3)
    assert counts.dtype == np.int32 and counts.shape == (2, 4, 5)
    noisy = kernels.fill_noisy(x, 0.5, 6, 3, np.empty((10, 3, 4, 5), np.float32))
    ones = (noisy[:, 0] > 0.5).sum(axis=0)
    assert np.array_equal(counts[1], ones) and np.array_equal(counts[0], 10 - ones)
    assert backend.batches == [4, 4, 2] and done == [4, 4, 2]  # progress is told each batch's size


def test_sample_counts_checks_the_image_against_the_model():
    with pytest.raises(InputError, match="multiples of 4"):
        Threshold(size_multiple=4).sample_counts(np.zeros((1, 6, 6), np.float32), 2, 0, 0)
    with pytest.raises(InputError, match=r"the model takes \(3, H, W\)"):
        Threshold(channels=3).sample_counts(np.zeros((1, 4, 4), np.float32), 2, 0, 0)


def test_graph_backend_refuses_an_empty_batch_size():
    with pytest.raises(ValueError) as error:
        Threshold(batch_size=0)
    assert str(error.value) == "batch_size must be >= 1, got 0"


# ---- batching policies: one static batch per call (reduced precision picks its kernels per shape) ---------------

def smallest_batch_with_fewest_calls(num: int, batch_size: int) -> int:
    """Worked out independently of call_batch: the fewest calls any batch <= batch_size needs is
    ceil(num / batch_size); the static batch is the smallest size that still needs no more calls."""
    fewest = -(-num // batch_size)
    return next(b for b in range(1, batch_size + 1) if -(-num // b) == fewest)


@pytest.mark.parametrize("batch_size", [1, 4, 7, 16])
def test_call_batch_is_the_smallest_static_batch_with_the_fewest_calls(batch_size):
    backend = Threshold(batch_size=batch_size)
    for num in range(1, 130):
        assert backend.call_batch(num) == smallest_batch_with_fewest_calls(num, batch_size), num
    assert [Threshold(batch_size=16).call_batch(n) for n in (10, 100, 33, 17, 16, 32)] == [10, 15, 11, 9, 16, 16]


@pytest.mark.parametrize("static, fixed, num, shapes", [
    (False, False, 10, [4, 4, 2]),  # dynamic: the last batch at its own size
    (True, False, 10, [4, 4, 4]),  # static: ceil(10 / 3) = 4, the last batch (2 samples) padded
    (True, False, 9, [3, 3, 3]),  # static: 9 samples in 3 calls of 3, nothing padded
    (True, False, 5, [3, 3]),  # static: 5 samples in 2 calls of 3
    (False, True, 5, [4, 4]),  # fixed batch: always the engine's batch
    (True, True, 5, [4, 4]),  # a fixed batch wins over the call batch
])
def test_every_sample_of_a_call_runs_at_one_batch_and_padding_is_dropped(static, fixed, num, shapes):
    x = np.random.default_rng(4).uniform(0, 1, (1, 6, 5)).astype(np.float32)
    backend = Threshold(batch_size=4)
    backend.static_batch, backend.fixed_batch = static, fixed
    done = []
    backend.progress = done.append
    counts = backend.sample_counts(x, num, seed=9, offset=2)
    assert backend.batches == shapes
    assert sum(done) == num and all(d <= s for d, s in zip(done, shapes))  # progress counts real samples only
    dynamic = Threshold(batch_size=4).sample_counts(x, num, seed=9, offset=2)
    assert np.array_equal(counts, dynamic) and counts.sum() == num * 30  # the padding's labels are not voted


def test_an_engine_refuses_an_image_of_another_size_in_one_line():
    from certseg_rt.errors import CertsegError
    from certseg_rt.runtime.sampling import check_engine_size

    with pytest.raises(CertsegError) as error:
        check_engine_size(np.zeros((1, 20, 24), np.float32), 16, 16, "--backend openvino ")
    assert str(error.value) == ("image is 20x24 but the engine was built for 16x16; resize the image or rebuild with "
                                "`certseg-rt build-engine --backend openvino --image-size 20`")
    with pytest.raises(CertsegError) as error:
        check_engine_size(np.zeros((20, 24), np.float32), 16, 16)  # a 2-D (gray) image is checked too
    assert str(error.value).endswith("rebuild with `certseg-rt build-engine --image-size 20`")
    check_engine_size(np.zeros((3, 16, 24), np.float32), 16, 24)  # the engine's size: no complaint
    check_engine_size([[0.5] * 24] * 16, 16, 24)  # any array-like
    check_engine_size(np.zeros(7, np.float32), 16, 24)  # not an image: check_input says so, not this check


# --- runs of several images packed into shared batches (GraphBackend.count_runs; volumes use it) ---

from certseg_rt.runtime.sampling import Run, count_runs  # noqa: E402


def _runs(images, n0=10, n=100):
    for d, x in enumerate(images):
        yield Run(x, d * (n0 + n), n0, tag=(d, 0))
        yield Run(x, d * (n0 + n) + n0, n, tag=(d, 1))


@pytest.mark.parametrize("static", [False, True])
def test_packed_runs_count_what_each_image_counts_alone(static):
    """Batches span images (every batch full but the last); each run's counts equal sample_counts of that run alone,
    so a slice's counts do not depend on the batching."""
    images = [np.random.default_rng(d).uniform(0, 1, (1, 6, 7)).astype(np.float32) for d in range(4)]
    backend = Threshold(batch_size=16)
    backend.static_batch = static
    done = list(count_runs(backend, _runs(images), seed=5))
    assert [r.tag for r in done] == [(d, p) for d in range(4) for p in (0, 1)]  # complete, in order
    total = 4 * 110
    assert backend.batches == [16] * (total // 16) + ([16] if static else [total % 16])  # static: padded
    alone = Threshold(batch_size=3)
    for r in done:
        assert r.counts.dtype == np.int32 and r.counted == r.num
        assert np.array_equal(r.counts, alone.sample_counts(r.x, r.num, 5, r.first))


def test_runs_through_an_adapter_and_a_device_loop_count_the_same():
    from certseg_rt.adapters import Replicate, with_adapter

    images = [np.random.default_rng(10 + d).uniform(0, 1, (1, 5, 5)).astype(np.float32) for d in range(3)]
    packed = {r.tag: r.counts for r in count_runs(with_adapter(Threshold(channels=3, batch_size=8), Replicate(1, 3)),
                                                   _runs(images, 4, 9), seed=1)}

    class DeviceLoop(Threshold):  # overrides sample_counts, as a device loop does: runs are counted one by one
        calls = []

        def sample_counts(self, x, num, seed, offset):
            self.calls.append((num, offset))
            return super().sample_counts(x, num, seed, offset)

    device = DeviceLoop(channels=3, batch_size=8)
    assert not device.packs_runs and Threshold().packs_runs
    alone = {r.tag: r.counts for r in count_runs(with_adapter(device, Replicate(1, 3)), _runs(images, 4, 9), seed=1)}
    assert DeviceLoop.calls == [(4, 0), (9, 4), (4, 13), (9, 17), (4, 26), (9, 30)]
    assert packed.keys() == alone.keys() and all(np.array_equal(packed[k], alone[k]) for k in packed)


def test_packed_runs_check_every_image_and_refuse_empty_runs():
    backend = Threshold(batch_size=4)
    bad = [Run(np.zeros((1, 3, 3), np.float32), 0, 2), Run(np.full((1, 3, 3), np.nan, np.float32), 2, 2)]
    with pytest.raises(InputError, match="NaN"):
        list(count_runs(backend, bad, 0))
    with pytest.raises(ValueError, match="at least one sample"):
        list(count_runs(backend, [Run(np.zeros((1, 3, 3), np.float32), 0, 0)], 0))


def test_device_packs_are_the_fewest_equal_ones_padded_and_unlike_runs_alone():
    """The rule of the loops that pack images (torch-cuda fused and careful): consecutive runs with one shape and
    (first, num) form a block; 5 images at most 4 per pack are 2 packs of 3 (not 4 + 1), the last padded with a
    copy of its last run; a run unlike its neighbours (another first sample, num or shape) is a block of its own."""
    from certseg_rt.runtime.sampling import device_packs

    def pairs(first, num, tags, size=2):
        return [(Run(np.full((1, size, size), t / 100, np.float32), first, num, tag=t),
                 np.full((1, size, size), t / 100, np.float32)) for t in tags]

    runs = [*pairs(0, 5, range(5)), *pairs(5, 5, [20, 21]), *pairs(0, 9, [30]), *pairs(40, 9, [40]),
            *pairs(0, 5, [50, 51], size=3)]
    asked = []

    def capacity(shape, num):
        asked.append((shape, num))
        return 4 if num == 5 else 2

    packs = [([run.tag for run, _ in pack], real) for pack, real in device_packs(iter(runs), capacity)]
    assert packs == [([0, 1, 2], 3), ([3, 4, 4], 2), ([20, 21], 2), ([30], 1), ([40], 1), ([50, 51], 2)]
    assert asked == [((1, 2, 2), 5), ((1, 2, 2), 5), ((1, 2, 2), 9), ((1, 2, 2), 9), ((1, 3, 3), 5)]  # per block
    assert Threshold().packs_runs and not Threshold().packs_images  # the host loop shares batches, not images


def test_certify_many_on_the_host_loop_is_certify_image_by_image():
    from certseg_rt.certify import certify, certify_many

    images = [np.random.default_rng(20 + d).uniform(0, 1, (1, 6, 6)).astype(np.float32) for d in range(3)]
    backend = Threshold(batch_size=8)
    certs = certify_many(backend, images, n0=4, n=30, tau=0.6, alpha=0.2, seed=3)
    assert backend.batches == [4, 8, 8, 8, 6] * 3  # each image's own calls, as certify makes them: no shared batch
    for x, cert in zip(images, certs):
        want = certify(Threshold(batch_size=8), x, n0=4, n=30, tau=0.6, alpha=0.2, seed=3)
        assert np.array_equal(cert.labels, want.labels) and np.array_equal(cert.pvalues, want.pvalues)
