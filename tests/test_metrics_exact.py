"""Dice and IoU on hand-made masks with false positives, false negatives and abstentions, each value worked out
by hand below, through certseg_rt.metrics and through the records `evaluate` writes.

The masks (A = abstained, 255):

    target          prediction
    1 1 1 0         1 1 A 1
    1 1 0 0         1 0 0 0
    2 2 0 0         2 2 A 2
    2 2 2 0         2 1 2 0

class 1: predicted at (0,0) (0,1) (0,3) (1,0) (3,1); true at (0,0) (0,1) (0,2) (1,0) (1,1).
         TP 3 [(0,0) (0,1) (1,0)], FP 2 [(0,3) (3,1)], FN 2 [(0,2) abstained, (1,1) called background].
         Dice = 2*3 / (2*3 + 2 + 2) = 6/10 = 0.6;  IoU = 3 / (3 + 2 + 2) = 3/7.
class 2: predicted at (2,0) (2,1) (2,3) (3,0) (3,2); true at (2,0) (2,1) (3,0) (3,1) (3,2).
         TP 4, FP 1 [(2,3)], FN 1 [(3,1) called class 1].
         Dice = 8 / (8 + 1 + 1) = 0.8;  IoU = 4 / (4 + 1 + 1) = 2/3.
The abstention at (2,2) is background in the target: no false positive of any class, no false negative of a
foreground class.  Mean foreground Dice (classes 1, 2) = 0.7, mean IoU = (3/7 + 2/3) / 2 = 23/42;
abstain rate = 2/16.  Forcing FP to 0 would give class 1 Dice 6/8 and class 2 Dice 8/9.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from certseg_rt import ABSTAIN
from certseg_rt.evaluate import Sample, evaluate_sample
from certseg_rt.metrics import abstain_rate, dice_per_class, iou_per_class, mean_foreground_dice
from certseg_rt.runtime.sampling import GraphBackend

A = ABSTAIN
TARGET = np.array([[1, 1, 1, 0],
                   [1, 1, 0, 0],
                   [2, 2, 0, 0],
                   [2, 2, 2, 0]], np.uint8)
PRED = np.array([[1, 1, A, 1],
                 [1, 0, 0, 0],
                 [2, 2, A, 2],
                 [2, 1, 2, 0]], np.uint8)


def test_dice_and_iou_with_false_positives_negatives_and_abstentions():
    assert dice_per_class(PRED, TARGET, range(1, 3)) == {1: pytest.approx(0.6), 2: pytest.approx(0.8)}
    assert iou_per_class(PRED, TARGET, range(1, 3)) == {1: pytest.approx(3 / 7), 2: pytest.approx(2 / 3)}
    assert mean_foreground_dice(PRED, TARGET, 3) == pytest.approx(0.7)
    assert abstain_rate(PRED) == 2 / 16


def test_a_class_absent_from_both_scores_one_and_a_false_alarm_scores_zero():
    # class 3 appears in neither mask: Dice = IoU = 1 (nothing to find, nothing wrongly found).
    assert dice_per_class(PRED, TARGET, range(3, 4)) == {3: 1.0}
    assert iou_per_class(PRED, TARGET, range(3, 4)) == {3: 1.0}
    assert mean_foreground_dice(PRED, TARGET, 4) == pytest.approx((0.6 + 0.8 + 1.0) / 3)
    # One pixel called class 3 where the target has none: TP 0, FP 1, FN 0 -> Dice 0, IoU 0.
    alarm, background = np.array([[3, 0]], np.uint8), np.zeros((1, 2), np.uint8)
    assert dice_per_class(alarm, background, range(3, 4)) == {3: 0.0}
    assert iou_per_class(alarm, background, range(3, 4)) == {3: 0.0}
    # A pixel of class 3 called background and a background pixel called 3: TP 0, FP 1, FN 1 -> 0.
    swapped = np.array([[0, 3]], np.uint8)
    assert dice_per_class(swapped, alarm, range(3, 4)) == {3: 0.0}
    assert iou_per_class(swapped, alarm, range(3, 4)) == {3: 0.0}
    # A missed pixel alone: TP 0, FP 0, FN 1 -> 0; a single correct pixel: 1.
    assert iou_per_class(background, alarm, range(3, 4)) == {3: 0.0}
    assert iou_per_class(alarm, alarm, range(3, 4)) == {3: 1.0} and dice_per_class(alarm, alarm, range(3, 4)) == {3: 1.0}


def test_abstaining_everywhere_scores_zero_and_is_never_a_false_positive():
    everywhere = np.full_like(TARGET, A)
    assert dice_per_class(everywhere, TARGET, range(1, 3)) == {1: 0.0, 2: 0.0}
    assert abstain_rate(everywhere) == 1.0 and abstain_rate(TARGET) == 0.0
    # On an all-background target, abstaining is no false positive: every foreground class scores 1.
    assert dice_per_class(everywhere, np.zeros_like(TARGET), range(1, 3)) == {1: 1.0, 2: 1.0}


class FixedCertificate(GraphBackend):
    """A backend whose votes give PRED exactly: all n votes for the predicted class where PRED certifies, an even
    split between classes 0 and 1 where it abstains (p = P(Binom(n, tau) >= n/2) ~ 1, never certified)."""

    name = "fixed"

    def __init__(self):
        super().__init__(sigma=0.25, num_classes=3, channels=1, size_multiple=1, batch_size=8)

    def sample_counts(self, x, num, seed, offset):
        assert x.shape == (1, *TARGET.shape)
        counts = np.zeros((3, *TARGET.shape), np.int32)
        for c in range(3):
            counts[c][PRED == c] = num
        counts[0][PRED == A] = num - num // 2
        counts[1][PRED == A] = num // 2
        return counts


def test_evaluate_records_the_hand_computed_scores(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16).save(tmp_path / "images" / "case.png")
    Image.fromarray(TARGET).save(tmp_path / "masks" / "case.png")
    sample = Sample("case", tmp_path / "images" / "case.png", tmp_path / "masks" / "case.png")
    record = evaluate_sample(sample, FixedCertificate(), lambda x: TARGET.copy(), ("background", "a", "b"), sigma=0.25,
                             n0=10, n=100, tau=0.75, alpha=0.001, seed=0, correction="holm")
    assert np.array_equal(record["_labels"], PRED)
    assert record["certified_dice"] == pytest.approx(0.7)
    assert record["certified_dice_a"] == pytest.approx(0.6) and record["certified_dice_b"] == pytest.approx(0.8)
    assert record["certified_iou"] == pytest.approx(23 / 42)
    assert record["certified_iou_a"] == pytest.approx(3 / 7) and record["certified_iou_b"] == pytest.approx(2 / 3)
    assert record["abstain_rate"] == 2 / 16
    assert record["clean_dice"] == 1.0  # the clean segmentation is the target itself
    assert record["backend"] == "fixed" and record["input_size"] == "4x4"
