"""The phantom modalities by name: what `make-phantoms --modality`, training and the bundled models share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import Phantom, phantom, polyp, skin


@dataclass(frozen=True)
class Modality:
    name: str
    description: str
    channels: int
    classes: tuple[str, ...]
    make_phantom: Callable[[int, int], Phantom]


MODALITIES = {
    "chest": Modality("chest", "chest X-ray, grayscale, lungs and heart", 1, phantom.CLASS_NAMES, phantom.make_phantom),
    "skin": Modality("skin", "dermoscopy, RGB, pigmented lesion", skin.CHANNELS, skin.CLASS_NAMES, skin.make_phantom),
    "polyp": Modality("polyp", "colonoscopy, RGB, polyp", polyp.CHANNELS, polyp.CLASS_NAMES, polyp.make_phantom),
}


def get_modality(name: str) -> Modality:
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; choose one of {', '.join(MODALITIES)}") from None


def modality_for(channels: int, name: str | None = None) -> Modality:
    """The named modality, or for a model that names none (or one without phantoms: a model trained on real
    scans, e.g. liver-ct's "abdominal-ct") the first one with its channel count (calibration and parity
    images only need to look like the right kind of image)."""
    if name in MODALITIES:
        return MODALITIES[name]
    return next(m for m in MODALITIES.values() if m.channels == channels) if channels in (1, 3) else \
        get_modality("chest")


def make_batch(modality: str, seeds, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, C, H, W) float32 and masks (N, H, W) uint8 for the given seeds."""
    make = get_modality(modality).make_phantom
    ph = [make(int(s), size) for s in seeds]
    return np.stack([p.image for p in ph]), np.stack([p.mask for p in ph])
