"""Self-training labels for an unlabelled CT volume: a teacher segmenter's confident organs (torch, scipy).

TotalSegmentator's third CT (ts_ct_aorta: chest and upper abdomen, arterial phase, 1.5 mm) comes without organ
labels, yet it shows a third patient's upper liver, spleen and kidneys.  A teacher (the previous liver-ct
segmenter) labels it, and only what it is sure of is kept:

- every axial slice is segmented in several views -- the whole body, then crops around the liver the first
  pass found (the liver-centred views the teacher was trained on) -- and the softmax of the views is
  averaged in the slice's own pixels;
- a voxel keeps its class when the averaged probability is >= ``confidence``; the liver and the spleen keep
  only their largest 3-D connected component, so a stray confident blob elsewhere is not taught as liver;
  from that core an organ grows (hysteresis) into the voxels the teacher still gives it with >= ``grow``
  that touch it in 3-D (the organ's rim);
- kidney is never taught from pseudo-labels: ts_ct_aorta ends above the kidneys, and the teacher's largest
  "kidney" there is the liver's dome (a small round section: the very confusion the next round must unlearn);
- everything else is ``IGNORE`` (255): the training loss skips it.

The labels are the teacher's output, not ground truth; training.json says so and names the teacher's weights.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..data.scans import CT_WINDOW
from .ct_slices import AIR_HU, IGNORE, CTVolume, _box, _resample

LIVER_MARGINS = (0.0, 0.15, 0.3)  # the liver-centred views: box plus this fraction on every side


def _views(vol: CTVolume, liver_box) -> list[tuple[float, float, float, float]]:
    r0, r1, c0, c1 = vol.body_box
    side = max(r1 - r0, c1 - c0) * 1.05
    cr, cc = (r0 + r1) / 2, (c0 + c1) / 2
    views = [(cr - side / 2, cr + side / 2, cc - side / 2, cc + side / 2)]
    if liver_box is not None:
        r0, r1, c0, c1 = liver_box
        h, w = r1 - r0, c1 - c0
        views += [(r0 - m * h, r1 + m * h, c0 - m * w, c1 + m * w) for m in LIVER_MARGINS]
    return views


def _paste(probs: torch.Tensor, box, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """A view's (C, SIZE, SIZE) probabilities back in the slice's pixels: (C, rows, cols) and the covered mask."""
    top, bottom, left, right = (int(round(v)) for v in box)
    bottom, right = max(bottom, top + 8), max(right, left + 8)
    back = F.interpolate(probs[None], size=(bottom - top, right - left), mode="bilinear", align_corners=False)[0]
    out = torch.zeros((probs.shape[0], *shape))
    covered = torch.zeros(shape, dtype=torch.bool)
    rs, re_ = max(top, 0), min(bottom, shape[0])
    cs, ce = max(left, 0), min(right, shape[1])
    if rs < re_ and cs < ce:
        out[:, rs:re_, cs:ce] = back[:, rs - top:re_ - top, cs - left:ce - left]
        covered[rs:re_, cs:ce] = True
    return out, covered


def _average_probs(segmenter, vol: CTVolume, liver_box) -> torch.Tensor:
    """(C, S, rows, cols): the teacher's softmax averaged over the views covering each pixel."""
    lo = CT_WINDOW[0] - CT_WINDOW[1] / 2
    total, count = None, torch.zeros(vol.hu.shape)
    for box in _views(vol, liver_box):
        x = torch.stack([_resample(vol.hu[k], box, "bilinear", AIR_HU) for k in range(vol.hu.shape[0])])
        x = ((x - lo) / CT_WINDOW[1]).clamp(0, 1)[:, None]
        with torch.no_grad():
            probs = torch.cat([segmenter(x[i:i + 32]).softmax(1) for i in range(0, len(x), 32)])
        for k in range(vol.hu.shape[0]):
            p, covered = _paste(probs[k], box, vol.hu.shape[1:])
            if total is None:
                total = torch.zeros((probs.shape[1], *vol.hu.shape))
            total[:, k] += p
            count[k] += covered
    return total / count.clamp(min=1)


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest 3-D connected component of mask."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    return mask if n == 0 else lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1


def _grown(core: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Hysteresis: the candidate voxels 3-D connected to the core (the core included)."""
    from scipy import ndimage

    lab, _ = ndimage.label(candidates | core)
    return np.isin(lab, np.unique(lab[core])) & (lab > 0)


def pseudo_label(segmenter, vol: CTVolume, confidence: float = 0.9, grow: float = 0.6) -> tuple[np.ndarray, dict]:
    """Labels (S, rows, cols) as CTVolume holds them (classes background, liver, spleen, kidney; IGNORE where
    unsure), and a summary for training.json.  An organ is its confident core (probability >= confidence,
    large components only) grown by hysteresis into the voxels the teacher gives it with >= grow that touch
    the core in 3-D; background needs >= confidence."""
    segmenter = segmenter.eval()
    probs = _average_probs(segmenter, vol, None)
    liver = _largest(((probs.argmax(0) == 1) & (probs[1] >= 0.5)).numpy())
    liver_box = _box(torch.from_numpy(liver).any(dim=0)) if liver.any() else None
    if liver_box is not None:  # second pass with the liver-centred views
        probs = _average_probs(segmenter, vol, liver_box)
    best, top = probs.argmax(0).numpy(), probs.max(0).values.numpy()
    labels = np.full(best.shape, IGNORE, np.uint8)
    labels[(best == 0) & (top >= confidence)] = 0
    for cls in (1, 2):  # liver, spleen; kidney voxels stay IGNORE (see the module's docstring)
        core = _largest((best == cls) & (top >= confidence))
        labels[_grown(core, (best == cls) & (top >= grow))] = cls
    counts = {name: int((labels == c).sum()) for c, name in ((0, "background"), (1, "liver"), (2, "spleen"),
                                                             (3, "kidney"), (IGNORE, "ignored"))}
    return labels, {"confidence": confidence, "grow": grow,
                    "views": ["whole body"] + [f"liver box + {m:.0%}" for m in LIVER_MARGINS],
                    "voxels": counts, "liver_slices": int((labels == 1).any(axis=(1, 2)).sum())}


def with_pseudo_labels(segmenter, vol: CTVolume, confidence: float = 0.9) -> tuple[CTVolume, dict]:
    """vol with the teacher's confident labels (a new CTVolume, labels in fetch-data's (L, P, S) order)."""
    labels, summary = pseudo_label(segmenter, vol, confidence)
    hu = np.transpose(vol.hu.numpy(), (2, 1, 0))
    return CTVolume(vol.name, hu, np.transpose(labels, (2, 1, 0)), max_side=max(hu.shape[:2])), summary

