"""Synthetic data the project trains and tests on (no data set can be downloaded here).

One generator per modality (``phantom`` chest X-ray, ``skin`` dermoscopy, ``polyp`` colonoscopy);
``modalities`` names them.  All share the Phantom record and the seed ranges below.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # float32 (C, H, W) in [0, 1]
    mask: np.ndarray  # uint8 (H, W), values index the modality's class names
    seed: int


# Seed ranges kept apart so that held-out evaluation never sees a training phantom.
TRAIN_SEEDS = range(0, 1_000_000)
HELD_OUT_SEEDS = range(10_000_000, 10_001_000)
