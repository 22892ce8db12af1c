"""Training slices from a few real CT volumes: crops, zooms, contrast, lesions and window changes (torch).

Few patients (TotalSegmentator's reference CTs) have to teach a model that segments both whole axial
slices and LiTS-style crops (the liver's bounding box resampled to 128x128, contrast-enhanced, with
tumours).  Each sample is drawn afresh from an axial slice in Hounsfield units:

- **field of view**: the in-plane bounding box of the volume's liver (all slices together, as a LiTS crop
  is made) with a random margin on each side (-8%..+35% of its size, sides independent, so the aspect
  ratio changes too), or a random square zoom inside the body, or the whole body; resampled to 128x128
  (bilinear, antialiased; labels nearest).  Anatomy keeps its sides: no left/right flips (the liver is on
  the patient's right, the spleen on the left, and the model may use that).
- **contrast phase**: the organs' HU shifted with soft-edged label masks (liver to a median of 40..170 HU,
  spleen with it, kidneys brighter), since the training CTs are native or of one phase and LiTS is portal-venous.
- **lesions**: in 3 of 4 samples 1-8 soft ellipses inside the liver, 20..95 HU darker with a smooth texture
  (hypodense tumours, labelled liver as
  in the liver Dice of LiTS, where tumour counts as liver).
- **scanner**: Gaussian noise of 0..20 HU, blur, then the abdominal window with jitter (level 50 +- 20 HU,
  width 400 x 0.85..1.15) to [0, 1].
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..data.scans import CT_WINDOW

AIR_HU = -1024.0
SIZE = 128


class CTVolume:
    """One CT volume as axial slices (rows, columns) in HU, with labels (class indices) or None."""

    def __init__(self, name: str, hu: np.ndarray, labels: np.ndarray | None, liver: int = 1, max_side: int = 256):
        """hu, labels: (L, P, S) volumes as fetch-data writes them; slices larger than max_side are averaged
        down by an integer factor first (a 512x512 slice is never shown at more than 128x128 anyway)."""
        self.name = name
        self.hu = torch.from_numpy(np.ascontiguousarray(np.transpose(hu, (2, 1, 0)), np.float32))  # (S, rows, cols)
        self.labels = None if labels is None else torch.from_numpy(
            np.ascontiguousarray(np.transpose(labels, (2, 1, 0)), np.int64))
        factor = max(1, int(np.ceil(max(self.hu.shape[1:]) / max_side)))
        if factor > 1:
            self.hu = F.avg_pool2d(self.hu[:, None], factor)[:, 0]
            if self.labels is not None:
                self.labels = self.labels[:, factor // 2::factor, factor // 2::factor][:, :self.hu.shape[1], :self.hu.shape[2]]
        body = (self.hu > -500).any(dim=0)
        self.body_box = _box(body)
        if self.labels is not None and (self.labels == liver).any():
            self.liver_box = _box((self.labels == liver).any(dim=0))
            self.liver_slices = torch.nonzero((self.labels == liver).flatten(1).any(dim=1)).flatten()
        else:
            self.liver_box, self.liver_slices = None, torch.zeros(0, dtype=torch.long)


def _box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = torch.nonzero(mask.any(dim=1)).flatten(), torch.nonzero(mask.any(dim=0)).flatten()
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def _field_of_view(vol: CTVolume, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(top, bottom, left, right) in pixels of the slice, possibly outside it (padded with air)."""
    mode = rng.random()
    if vol.liver_box is not None and mode < 0.5:
        r0, r1, c0, c1 = vol.liver_box
        h, w = r1 - r0, c1 - c0
        m = rng.uniform(-0.08, 0.35, 4)
        return r0 - m[0] * h, r1 + m[1] * h, c0 - m[2] * w, c1 + m[3] * w
    r0, r1, c0, c1 = vol.body_box
    h, w = r1 - r0, c1 - c0
    if mode < 0.75:  # a square zoom inside the body
        side = rng.uniform(0.35, 0.9) * max(h, w)
        cr, cc = rng.uniform(r0 + side / 3, max(r0 + side / 3, r1 - side / 3)), \
            rng.uniform(c0 + side / 3, max(c0 + side / 3, c1 - side / 3))
        return cr - side / 2, cr + side / 2, cc - side / 2, cc + side / 2
    side = max(h, w) * rng.uniform(1.0, 1.15)  # the whole body, square
    cr, cc = (r0 + r1) / 2, (c0 + c1) / 2
    return cr - side / 2, cr + side / 2, cc - side / 2, cc + side / 2


def _resample(img: torch.Tensor, box, mode: str, fill: float) -> torch.Tensor:
    """The box of a (rows, cols) slice resampled to SIZE x SIZE (antialiased when shrinking)."""
    top, bottom, left, right = (int(round(v)) for v in box)
    bottom, right = max(bottom, top + 8), max(right, left + 8)
    h, w = img.shape
    pad = (max(0, -left), max(0, right - w), max(0, -top), max(0, bottom - h))
    x = F.pad(img[None, None].float(), pad, value=fill) if any(pad) else img[None, None].float()
    x = x[..., top + pad[2]:bottom + pad[2], left + pad[0]:right + pad[0]]
    if mode == "nearest":
        return F.interpolate(x, size=(SIZE, SIZE), mode="nearest-exact")[0, 0]
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)[0, 0]


def _soft(mask: torch.Tensor, blur: float = 1.0) -> torch.Tensor:
    return _blur(mask.float(), blur)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    y = F.conv2d(F.pad(x[None, None], (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))[0, 0]


def _contrast_phase(hu: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    liver = labels == 1
    if not liver.any():
        return hu
    current = float(hu[liver].median())
    shift = rng.uniform(40, 170) - current
    out = hu + shift * _soft(liver)
    out = out + (shift + rng.uniform(-25, 35)) * _soft(labels == 2)  # spleen enhances with the liver
    return out + rng.uniform(0, 150) * _soft(labels == 3)  # kidneys: cortex enhances strongly


def _lesions(hu: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    liver = labels == 1
    where = torch.nonzero(liver)
    if len(where) < 50:
        return hu
    scale = float(np.sqrt(len(where) / np.pi))  # radius of a disc of the liver's area
    rr, cc = torch.meshgrid(torch.arange(hu.shape[0], dtype=torch.float32),
                            torch.arange(hu.shape[1], dtype=torch.float32), indexing="ij")
    dark = torch.zeros_like(hu)
    for _ in range(int(rng.integers(1, 9))):
        r, c = where[int(rng.integers(len(where)))].tolist()
        a, b = scale * rng.uniform(0.06, 0.45, 2)
        th = rng.uniform(0, np.pi)
        u = ((rr - r) * np.cos(th) + (cc - c) * np.sin(th)) / a
        v = (-(rr - r) * np.sin(th) + (cc - c) * np.cos(th)) / b
        blob = torch.sigmoid((1 - torch.sqrt(u ** 2 + v ** 2)) * rng.uniform(3, 12))
        dark = torch.maximum(dark, blob * rng.uniform(20, 95))
    # Tumours are not uniform: a smooth random texture of +-35% of their darkness.
    coarse = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(int(rng.integers(2 ** 31))))
    texture = F.interpolate(coarse, size=hu.shape, mode="bicubic", align_corners=False)[0, 0]
    return hu - dark * (0.65 + 0.7 * texture) * _soft(liver, 0.7)


def sample(vol: CTVolume, rng: np.random.Generator, *, liver_bias: float = 0.75,
           organs: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One augmented 128x128 training slice: image (1, H, W) in [0, 1] and labels (H, W), or None."""
    if len(vol.liver_slices) and rng.random() < liver_bias:
        k = int(vol.liver_slices[int(rng.integers(len(vol.liver_slices)))])
    else:
        k = int(rng.integers(vol.hu.shape[0]))
    hu, labels = vol.hu[k], None if vol.labels is None else vol.labels[k]
    if labels is not None and organs:
        if rng.random() < 0.8:
            hu = _contrast_phase(hu, labels, rng)
        if rng.random() < 0.75:
            hu = _lesions(hu, labels, rng)
    box = _field_of_view(vol, rng)
    img = _resample(hu, box, "bilinear", AIR_HU)
    lab = None if labels is None else _resample(labels, box, "nearest", 0).long()
    img = img + rng.uniform(0, 20) * torch.randn_like(img)
    if rng.random() < 0.3:
        img = _blur(img, rng.uniform(0.3, 1.0))
    level, width = CT_WINDOW[0] + rng.uniform(-20, 20), CT_WINDOW[1] * rng.uniform(0.85, 1.15)
    img = ((img - (level - width / 2)) / width).clamp(0, 1)
    return img[None], lab


def batch(volumes: list[CTVolume], n: int, rng: np.random.Generator, **kw):
    """n samples from volumes chosen uniformly (each patient weighs the same, whatever its slice count)."""
    got = [sample(volumes[int(rng.integers(len(volumes)))], rng, **kw) for _ in range(n)]
    x = torch.stack([g[0] for g in got])
    y = None if any(g[1] is None for g in got) else torch.stack([g[1] for g in got])
    return x, y
