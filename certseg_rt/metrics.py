"""Certified segmentation quality with abstention.

Convention (as in SegCertify): an abstained pixel counts as a false negative of its true class and
never as a false positive of any class, so abstaining can only lower Dice and IoU.
"""
from __future__ import annotations

import numpy as np

from .certify import ABSTAIN


def _confusion(pred: np.ndarray, target: np.ndarray, c: int) -> tuple[int, int, int]:
    p, t = pred == c, target == c
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))  # abstained pixels are never == c, so never false positives
    fn = int(np.count_nonzero(~p & t))  # includes abstained pixels of class c
    return tp, fp, fn


def dice_per_class(pred: np.ndarray, target: np.ndarray, classes: range) -> dict[int, float]:
    """Dice per class; a class absent from both prediction and target scores 1."""
    out = {}
    for c in classes:
        tp, fp, fn = _confusion(pred, target, c)
        out[c] = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return out


def iou_per_class(pred: np.ndarray, target: np.ndarray, classes: range) -> dict[int, float]:
    out = {}
    for c in classes:
        tp, fp, fn = _confusion(pred, target, c)
        out[c] = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
    return out


def mean_foreground_dice(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the foreground classes 1..C-1 (background excluded, as is usual in medical imaging)."""
    return float(np.mean(list(dice_per_class(pred, target, range(1, num_classes)).values())))


def abstain_rate(pred: np.ndarray) -> float:
    return float(np.mean(pred == ABSTAIN))
