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
