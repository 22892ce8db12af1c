"""Synthetic dermoscopy images (RGB) with binary lesion masks, deterministic by seed.

What a dermatoscope shows, crudely: skin of a random tone with texture, a pigmented lesion with an
irregular, partly fuzzy border and uneven pigment (darker core, a network-like texture, sometimes a
blue-grey veil), dark hairs crossing the field -- over the lesion too, which the mask still counts as
lesion, as expert annotations do -- and the scope's vignetting, often a black circular rim.

Classes: 0 skin, 1 lesion.
"""
from __future__ import annotations

import numpy as np

from . import Phantom
from .shapes import blob_radius, grid, lowpass, smooth_noise

CLASS_NAMES = ("skin", "lesion")
CHANNELS = 3

# Skin tones from light to dark (RGB in [0, 1]); a phantom interpolates between neighbours.
_SKIN_TONES = np.array([[0.95, 0.80, 0.70], [0.88, 0.68, 0.56], [0.76, 0.56, 0.42], [0.58, 0.40, 0.29]])


def _smoothstep(edge0, edge1, x):
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _hairs(rng, xx, yy, count):
    """Dark curved strokes: quadratic Bezier curves, 1-2 pixels wide, as a coverage map in [0, 1]."""
    size = xx.shape[0]
    cover = np.zeros_like(xx)
    for _ in range(count):
        p0, p2 = rng.uniform(-1.2, 1.2, 2), rng.uniform(-1.2, 1.2, 2)
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.35, 2)
        t = np.linspace(0, 1, 4 * size)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        cols = np.clip(((pts[:, 0] + 1) / 2 * size).astype(int), 0, size - 1)
        rows = np.clip(((pts[:, 1] + 1) / 2 * size).astype(int), 0, size - 1)
        inside = (np.abs(pts[:, 0]) < 1) & (np.abs(pts[:, 1]) < 1)
        stroke = np.zeros_like(xx)
        stroke[rows[inside], cols[inside]] = 1.0
        width = rng.uniform(0.5, 1.2) * size / 128  # thickens with resolution
        cover = np.maximum(cover, np.clip(lowpass(stroke, size / max(width, 0.5)) * 3.0, 0, 1))
    return cover


def make_phantom(seed: int, size: int = 128):
    rng = np.random.default_rng(seed)
    xx, yy = grid(size)

    # Lesion: an irregular blob (high-order wobble gives the irregular border of a melanoma).
    wobble = [(k, rng.uniform(0.0, 0.12 if k < 5 else 0.05), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4, 5, 7, 9)]
    r = blob_radius(xx, yy, rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25), rng.uniform(0.22, 0.55),
                    rng.uniform(0.22, 0.55), rng.uniform(0, np.pi), wobble, power=rng.uniform(1.8, 2.4))
    r = r * (1.0 + 0.05 * smooth_noise(rng, size, rng.uniform(12, 24)))  # ragged edge at a finer scale
    mask = (r <= 1.0).astype(np.uint8)

    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo = int(tone)
    skin = _SKIN_TONES[lo] + (tone - lo) * (_SKIN_TONES[min(lo + 1, len(_SKIN_TONES) - 1)] - _SKIN_TONES[lo])
    img = np.broadcast_to(skin[:, None, None], (3, size, size)).copy()
    img *= 1.0 + 0.03 * smooth_noise(rng, size, rng.uniform(3, 8))  # skin texture, same in all channels
    img[0] += 0.02 * smooth_noise(rng, size, rng.uniform(2, 5))  # redness varies (capillaries)

    # Pigment: brown, darker towards the core, with a network-like texture; the border is fuzzy
    # over a random width (the mask is the annotation's hard edge at r = 1).
    brown = np.array([rng.uniform(0.35, 0.55), rng.uniform(0.20, 0.32), rng.uniform(0.12, 0.22)])
    fuzz = rng.uniform(0.03, 0.18)
    weight = 1.0 - _smoothstep(1.0 - fuzz, 1.0 + fuzz / 2, r)
    core = _smoothstep(1.0, 0.2, r) * rng.uniform(0.2, 0.5)
    network = np.abs(np.sin(smooth_noise(rng, size, rng.uniform(14, 30)) * rng.uniform(2, 4)))
    shade = 1.0 - core - rng.uniform(0.05, 0.2) * network
    lesion = brown[:, None, None] * shade
    if rng.uniform() < 0.4:  # blue-white veil over part of the lesion
        veil = _smoothstep(0.3, 1.5, smooth_noise(rng, size, rng.uniform(4, 8))) * rng.uniform(0.3, 0.7)
        lesion = lesion * (1 - veil) + np.array([0.45, 0.5, 0.62])[:, None, None] * veil
    contrast = rng.uniform(0.55, 1.0)  # faint lesions on dark skin are the hard cases
    img = img * (1 - contrast * weight) + lesion * contrast * weight

    # Hairs cross skin and lesion alike.
    hair = _hairs(rng, xx, yy, int(rng.integers(0, 9)))
    hair_colour = np.array([0.12, 0.08, 0.06]) * rng.uniform(0.5, 1.5)
    img = img * (1 - hair) + hair_colour[:, None, None] * hair

    # The dermatoscope: vignetting, often a black circular rim; then blur, noise, white balance.
    radius = np.sqrt(xx ** 2 + yy ** 2)
    img *= 1.0 - rng.uniform(0.1, 0.35) * radius ** 2
    if rng.uniform() < 0.6:
        rim = rng.uniform(1.0, 1.35)
        img *= 1.0 - _smoothstep(rim - 0.06, rim, radius)
    img = lowpass(img, rng.uniform(45, 80) * size / 128)
    img *= rng.uniform(0.9, 1.1, 3)[:, None, None]
    img += rng.normal(0.0, rng.uniform(0.005, 0.02), img.shape)
    return Phantom(image=np.clip(img, 0.0, 1.0).astype(np.float32), mask=mask, seed=seed)
