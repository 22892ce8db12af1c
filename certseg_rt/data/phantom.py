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

from dataclasses import dataclass

import numpy as np

CLASS_NAMES = ("background", "right_lung", "left_lung", "heart")


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # float32 (1, H, W) in [0, 1]
    mask: np.ndarray  # uint8 (H, W), values index CLASS_NAMES
    seed: int


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Coordinates in [-1, 1], y downwards.
    c = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(c, c, indexing="xy")


def _blob(xx, yy, cx, cy, rx, ry, angle, wobble, power=2.0):
    """Inside-test of a rotated superellipse whose radius wobbles with the polar angle."""
    ca, sa = np.cos(angle), np.sin(angle)
    u = ((xx - cx) * ca + (yy - cy) * sa) / rx
    v = (-(xx - cx) * sa + (yy - cy) * ca) / ry
    theta = np.arctan2(v, u)
    r = (np.abs(u) ** power + np.abs(v) ** power) ** (1.0 / power)
    edge = 1.0 + sum(a * np.cos(k * theta + ph) for k, a, ph in wobble)
    return r <= edge


def _smooth_noise(rng, size, scale):
    """Band-limited texture: white noise low-pass filtered in the Fourier domain."""
    f = np.fft.rfftfreq(size)[None, :] ** 2 + np.fft.fftfreq(size)[:, None] ** 2
    spectrum = np.fft.rfft2(rng.standard_normal((size, size))) * np.exp(-f * (size / scale) ** 2)
    tex = np.fft.irfft2(spectrum, s=(size, size))
    return tex / (tex.std() + 1e-12)


def _lung(rng, xx, yy, side):
    # side = -1: image left (patient's right lung), +1: image right.
    cx = side * rng.uniform(0.30, 0.42)
    cy = rng.uniform(-0.12, 0.05)
    rx = rng.uniform(0.20, 0.28)
    ry = rng.uniform(0.45, 0.58)
    angle = side * rng.uniform(-0.05, 0.18)
    wobble = [(k, rng.uniform(0.0, 0.06), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]
    lung = _blob(xx, yy, cx, cy, rx, ry, angle, wobble, power=rng.uniform(1.8, 2.6))
    # The costophrenic angle: cut the lung base with a tilted line so it is not an ellipse.
    base = cy + ry * rng.uniform(0.75, 0.95) + side * 0.15 * (xx - cx)
    return lung & (yy < base)


def make_phantom(seed: int, size: int = 128) -> Phantom:
    rng = np.random.default_rng(seed)
    xx, yy = _grid(size)

    body = _blob(xx, yy, 0.0, rng.uniform(0.0, 0.1), rng.uniform(0.78, 0.95), rng.uniform(0.95, 1.15),
                 rng.uniform(-0.05, 0.05), [(2, rng.uniform(0, 0.05), rng.uniform(0, 6.3))])
    right_lung = _lung(rng, xx, yy, -1.0) & body
    left_lung = _lung(rng, xx, yy, +1.0) & body
    heart = _blob(xx, yy, rng.uniform(0.05, 0.2), rng.uniform(0.18, 0.32), rng.uniform(0.24, 0.34),
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
    img += lungs * rng.uniform(0.02, 0.05) * _smooth_noise(rng, size, rng.uniform(10, 25))
    img += body * rng.uniform(0.01, 0.03) * _smooth_noise(rng, size, rng.uniform(4, 10))
    img *= 1.0 + rng.uniform(-0.15, 0.15) * xx + rng.uniform(-0.15, 0.15) * yy

    # Detector blur and noise, then a random window (contrast/brightness).
    img = np.fft.irfft2(np.fft.rfft2(img) * np.exp(
        -(np.fft.rfftfreq(size)[None, :] ** 2 + np.fft.fftfreq(size)[:, None] ** 2) * (size / rng.uniform(40, 80)) ** 2),
        s=(size, size))
    img += rng.normal(0.0, rng.uniform(0.005, 0.03), img.shape)
    gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-0.08, 0.08)
    img = np.clip(img * gain + bias, 0.0, 1.0)
    return Phantom(image=img.astype(np.float32)[None], mask=mask, seed=seed)


def make_batch(seeds, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) float32 and masks (N, H, W) uint8 for the given seeds."""
    ph = [make_phantom(int(s), size) for s in seeds]
    return np.stack([p.image for p in ph]), np.stack([p.mask for p in ph])


# Seed ranges kept apart so that held-out evaluation never sees a training phantom.
TRAIN_SEEDS = range(0, 1_000_000)
HELD_OUT_SEEDS = range(10_000_000, 10_001_000)
