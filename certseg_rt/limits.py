"""The largest image certseg-rt takes, checked before pixels are decoded (io, medical_io, volumes, the runtime).

A module of its own so that every reader can check sizes without importing another reader (io and medical_io
used to import each other for it).
"""
from __future__ import annotations

from .errors import InputError

# Height x width.  Larger images are refused before their pixels are decoded: a batch of noisy copies of a
# 64-megapixel image alone would take gigabytes.
MAX_PIXELS = 4096 * 4096


def check_image_size(height: int, width: int, what: str = "image",
                     fix: str = "downsample it to the model's input size") -> None:
    if height * width > MAX_PIXELS:
        raise InputError(f"{what} is {height}x{width} ({height * width / 1e6:.1f} megapixels); certseg-rt takes images "
                         f"up to {MAX_PIXELS / 1e6:.1f} megapixels (e.g. 4096x4096): {fix}")
