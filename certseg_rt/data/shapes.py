"""Geometry and texture shared by the phantom generators (numpy only)."""
from __future__ import annotations

import numpy as np


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Coordinates in [-1, 1], y downwards.
    c = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(c, c, indexing="xy")


def blob(xx, yy, cx, cy, rx, ry, angle, wobble, power=2.0):
    """Inside-test of a rotated superellipse whose radius wobbles with the polar angle."""
    return blob_radius(xx, yy, cx, cy, rx, ry, angle, wobble, power) <= 1.0


def blob_radius(xx, yy, cx, cy, rx, ry, angle, wobble, power=2.0):
    """Normalised radius of each point in that blob: < 1 inside, 1 on the wobbly edge, > 1 outside."""
    ca, sa = np.cos(angle), np.sin(angle)
    u = ((xx - cx) * ca + (yy - cy) * sa) / rx
    v = (-(xx - cx) * sa + (yy - cy) * ca) / ry
    theta = np.arctan2(v, u)
    r = (np.abs(u) ** power + np.abs(v) ** power) ** (1.0 / power)
    edge = 1.0 + sum(a * np.cos(k * theta + ph) for k, a, ph in wobble)
    return r / edge


def smooth_noise(rng, size, scale):
    """Band-limited texture: white noise low-pass filtered in the Fourier domain."""
    f = np.fft.rfftfreq(size)[None, :] ** 2 + np.fft.fftfreq(size)[:, None] ** 2
    spectrum = np.fft.rfft2(rng.standard_normal((size, size))) * np.exp(-f * (size / scale) ** 2)
    tex = np.fft.irfft2(spectrum, s=(size, size))
    return tex / (tex.std() + 1e-12)


def lowpass(img, scale):
    """Gaussian-like blur of the last two axes (square): optics and detector blur."""
    size = img.shape[-1]
    f = np.fft.rfftfreq(size)[None, :] ** 2 + np.fft.fftfreq(size)[:, None] ** 2
    return np.fft.irfft2(np.fft.rfft2(img) * np.exp(-f * (size / scale) ** 2), s=img.shape[-2:])
