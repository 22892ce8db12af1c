import numpy as np
import pytest

from certseg_rt import ABSTAIN
from certseg_rt.data.phantom import CLASS_NAMES, make_phantom
from certseg_rt.metrics import dice_per_class, iou_per_class, mean_foreground_dice


def test_phantoms_are_deterministic_and_varied():
    a, b, c = make_phantom(1), make_phantom(1), make_phantom(2)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask)
    assert a.image.dtype == np.float32 and a.image.shape == (1, 128, 128)
    assert 0 <= a.image.min() and a.image.max() <= 1


def test_phantoms_have_every_class_with_plausible_anatomy():
    fractions = []
    for seed in range(20):
        ph = make_phantom(seed)
        frac = np.bincount(ph.mask.ravel(), minlength=len(CLASS_NAMES)) / ph.mask.size
        assert (frac > 0.01).all(), f"seed {seed}: a class is missing ({frac})"
        fractions.append(frac)
        ys, xs = np.nonzero(ph.mask == 1)
        ys2, xs2 = np.nonzero(ph.mask == 2)
        assert xs.mean() < 64 < xs2.mean()  # right lung on the image's left, left lung on its right
        lungs = np.isin(ph.mask, (1, 2))
        assert ph.image[0][lungs].mean() < ph.image[0][ph.mask == 3].mean()  # air is dark, heart bright
    assert np.std(fractions, axis=0)[1:].min() > 0.003  # organ sizes vary between phantoms


def test_dice_with_abstention_hand_made():
    target = np.array([[1, 1, 0, 2]])
    pred = np.array([[1, ABSTAIN, ABSTAIN, 2]])
    # class 1: TP 1, FN 1 (abstained), FP 0 -> 2/3; class 2: perfect.  The abstained background pixel
    # is no false positive of anything.
    d = dice_per_class(pred, target, range(1, 3))
    assert d[1] == pytest.approx(2 / 3) and d[2] == 1.0
    assert iou_per_class(pred, target, range(1, 3))[1] == pytest.approx(1 / 2)
    assert mean_foreground_dice(pred, target, 3) == pytest.approx((2 / 3 + 1) / 2)
    assert dice_per_class(np.zeros((2, 2)), np.zeros((2, 2)), range(1, 2))[1] == 1.0  # absent from both
