"""Synthetic chest-X-ray phantoms with multi-class masks, deterministic by seed.

A frontal chest radiograph seen crudely: a bright body outline, two dark lungs, a
bright heart overlapping the patient's left lung (the image's right, radiological
convention), a spine, ribs arcing across the lungs, soft-tissue texture, exposure and
contrast that vary between "patients", and detector noise.  Everything that makes a
real segmenter work a little -- shape, position, intensity, texture and noise -- varies
with the seed, so a model cannot learn a fixed template.

Classes: 0 background, 1 right lung (image left), 2 left lung (image right), 3 heart.
"""
from __future__ import annotations

import numpy as np

from . import HELD_OUT_SEEDS, TRAIN_SEEDS, Phantom  # noqa: F401  (re-exported)
from .shapes import blob, grid, lowpass, smooth_noise

CLASS_NAMES = ("background", "right_lung", "left_lung", "heart")


def _lung(rng, xx, yy, side):
    # side = -1: image left (patient's right lung), +1: image right.
    cx = side * rng.uniform(0.30, 0.42)
    cy = rng.uniform(-0.12, 0.05)
    rx = rng.uniform(0.20, 0.28)
    ry = rng.uniform(0.45, 0.58)
    angle = side * rng.uniform(-0.05, 0.18)
    wobble = [(k, rng.uniform(0.0, 0.06), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]
    lung = blob(xx, yy, cx, cy, rx, ry, angle, wobble, power=rng.uniform(1.8, 2.6))
    # The costophrenic angle: cut the lung base with a tilted line so it is not an ellipse.
    base = cy + ry * rng.uniform(0.75, 0.95) + side * 0.15 * (xx - cx)
    return lung & (yy < base)


def make_phantom(seed: int, size: int = 128) -> Phantom:
    rng = np.random.default_rng(seed)
    xx, yy = grid(size)

    body = blob(xx, yy, 0.0, rng.uniform(0.0, 0.1), rng.uniform(0.78, 0.95), rng.uniform(0.95, 1.15),
                 rng.uniform(-0.05, 0.05), [(2, rng.uniform(0, 0.05), rng.uniform(0, 6.3))])
    right_lung = _lung(rng, xx, yy, -1.0) & body
    left_lung = _lung(rng, xx, yy, +1.0) & body
    heart = blob(xx, yy, rng.uniform(0.05, 0.2), rng.uniform(0.18, 0.32), rng.uniform(0.24, 0.34),
                  rng.uniform(0.18, 0.26), rng.uniform(-0.6, -0.2),
                  [(k, rng.uniform(0, 0.05), rng.uniform(0, 6.3)) for k in (2, 3)]) & body

    mask = np.zeros((size, size), np.uint8)
    mask[right_lung] = 1
    mask[left_lung] = 2
    mask[heart] = 3  # the heart lies in front of the lungs and hides them

    tissue = rng.uniform(0.45, 0.65)
    air = rng.uniform(0.04, 0.12)
    img = np.full((size, size), air)
    img[body] = tissue
    lung_level = rng.uniform(0.12, 0.25)
    lungs = right_lung | left_lung
    img[lungs] = lung_level
    img[heart] = tissue + rng.uniform(0.05, 0.2)

    # Spine: a bright vertical band behind everything but the heart.
    spine_w = rng.uniform(0.05, 0.09)
    spine = (np.abs(xx - rng.uniform(-0.04, 0.04)) < spine_w) & body & ~lungs
    img[spine] += rng.uniform(0.1, 0.2)

    # Ribs: faint bright arcs crossing the lungs, as on a real film.
    rib_gain = rng.uniform(0.04, 0.1)
    phase = rng.uniform(0, 1)
    spacing = rng.uniform(0.16, 0.22)
    arcs = np.abs(np.sin(np.pi * ((yy - 0.25 * xx**2) / spacing + phase)))
    img += rib_gain * (arcs > 0.85) * lungs

    # Lung vessels and soft-tissue texture, then a smooth exposure gradient.
    img += lungs * rng.uniform(0.02, 0.05) * smooth_noise(rng, size, rng.uniform(10, 25))
    img += body * rng.uniform(0.01, 0.03) * smooth_noise(rng, size, rng.uniform(4, 10))
    img *= 1.0 + rng.uniform(-0.15, 0.15) * xx + rng.uniform(-0.15, 0.15) * yy

    # Detector blur and noise, then a random window (contrast/brightness).
    img = lowpass(img, rng.uniform(40, 80))
    img += rng.normal(0.0, rng.uniform(0.005, 0.03), img.shape)
    gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-0.08, 0.08)
    img = np.clip(img * gain + bias, 0.0, 1.0)
    return Phantom(image=img.astype(np.float32)[None], mask=mask, seed=seed)
