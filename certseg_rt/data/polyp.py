"""Synthetic colonoscopy frames (RGB) with binary polyp masks, deterministic by seed.

What an endoscope shows, crudely: pink-red mucosa folded into ridges (shaded ridges along curved
lines), a vessel texture, the dark lumen where the light does not reach, a polyp -- a dome on the
wall, lit from the scope so that its top is brighter and its base shaded, its colour and texture
only a little different from the mucosa -- and specular highlights where the wet surface faces the
light.  The light falls off from the centre, so the periphery is dark.

Classes: 0 mucosa, 1 polyp.
"""
from __future__ import annotations

import numpy as np

from . import Phantom
from .shapes import blob_radius, grid, lowpass, smooth_noise

CLASS_NAMES = ("mucosa", "polyp")
CHANNELS = 3


def make_phantom(seed: int, size: int = 128):
    rng = np.random.default_rng(seed)
    xx, yy = grid(size)

    mucosa = np.array([rng.uniform(0.72, 0.9), rng.uniform(0.32, 0.45), rng.uniform(0.28, 0.4)])
    img = np.broadcast_to(mucosa[:, None, None], (3, size, size)).copy()

    # Folds: shaded ridges around the lumen, bent by a smooth displacement.
    lx, ly = rng.uniform(-0.5, 0.5, 2)  # where the lumen is
    bend = 0.05 * smooth_noise(rng, size, rng.uniform(2, 4))
    ring = np.sqrt((xx - lx) ** 2 + (yy - ly) ** 2) + bend
    period = rng.uniform(0.18, 0.3)
    folds = np.sin(2 * np.pi * ring / period + rng.uniform(0, 2 * np.pi))
    img *= (1.0 + rng.uniform(0.08, 0.18) * folds)[None]
    vessels = np.abs(smooth_noise(rng, size, rng.uniform(18, 30))) < 0.12
    img[1:] -= 0.06 * vessels  # thin darker-red vessels
    lumen = np.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / (2 * rng.uniform(0.08, 0.2) ** 2))
    img *= 1.0 - 0.85 * lumen[None]

    # Polyp: a dome on the wall, away from the lumen.  Shading: lit from the scope (the viewer), so
    # brightness follows the dome's surface normal; its base blends into the mucosa.
    angle = rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(0.3, 0.55)
    cx, cy = np.clip(lx + dist * np.cos(angle), -0.55, 0.55), np.clip(ly + dist * np.sin(angle), -0.55, 0.55)
    wobble = [(k, rng.uniform(0.0, 0.08), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]
    r = blob_radius(xx, yy, cx, cy, rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4), rng.uniform(0, np.pi), wobble)
    mask = (r <= 1.0).astype(np.uint8)
    height = np.sqrt(np.clip(1.0 - r ** 2, 0.0, 1.0))
    tint = np.array([rng.uniform(-0.05, 0.1), rng.uniform(-0.04, 0.08), rng.uniform(-0.04, 0.06)])
    surface = smooth_noise(rng, size, rng.uniform(10, 20))  # the polyp's own granular texture
    polyp = img * (0.8 + 0.35 * height)[None] + tint[:, None, None] + 0.03 * surface[None]
    edge = np.clip((1.0 - r) / 0.08, 0.0, 1.0)[None]  # a few pixels where the base meets the wall
    img = img * (1 - edge) + polyp * edge
    img *= (1.0 - rng.uniform(0.1, 0.3) * (r < 1.15) * (r > 1.0))[None]  # the shadow at its base

    # Specular highlights: small saturated spots where a bumpy wet surface faces the light.
    bumps = smooth_noise(rng, size, rng.uniform(15, 30)) + 1.5 * height * rng.uniform(0.5, 1.5)
    spec = (bumps > np.quantile(bumps, 1 - rng.uniform(0.003, 0.015))).astype(float)
    spec = np.clip(lowpass(spec, size / 1.5) * 2.0, 0.0, 1.0)
    img = img * (1 - spec[None]) + spec[None] * np.array([1.0, 0.98, 0.95])[:, None, None]

    # The light falls off from the centre of the field; the corners are black (the round optics).
    radius = np.sqrt(xx ** 2 + yy ** 2)
    img *= (1.0 - rng.uniform(0.3, 0.6) * radius ** 2)[None]
    img *= (radius < rng.uniform(1.15, 1.45))[None]
    img = lowpass(img, rng.uniform(40, 70) * size / 128)
    img += rng.normal(0.0, rng.uniform(0.005, 0.02), img.shape)
    return Phantom(image=np.clip(img, 0.0, 1.0).astype(np.float32), mask=mask, seed=seed)
