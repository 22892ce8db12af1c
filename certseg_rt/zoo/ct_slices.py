"""Training slices from a few real CT volumes: crops, zooms, contrast, lesions and window changes (torch).

Few patients (TotalSegmentator's reference CTs) have to teach a model that segments both whole axial
slices and LiTS-style crops (the liver's bounding box resampled to 128x128, contrast-enhanced, with
tumours).  Each sample is drawn afresh from an axial slice in Hounsfield units:

- **slice**: mostly one with liver; of those, a share with a small liver cross-section (< 30% of the
  volume's largest: the inferior tip and the dome).  A LiTS crop spans the liver from tip to dome, so a
  quarter of its slices are such small sections, while uniform draws from partial training volumes rarely
  show them -- and a small round section is exactly what the model confuses with spleen or kidney.
- **field of view**: the in-plane bounding box of the volume's liver (all slices together, as a LiTS crop
  is made) with a random margin on each side (-8%..+35% of its size, sides independent, so the aspect
  ratio changes too), or a random square zoom inside the body, or the whole body; resampled to 128x128
  with a random rotation (+-15 degrees) and a smooth elastic warp (patients differ in shape, and two or
  three patients are all there is); bilinear, antialiased; labels nearest.  Anatomy keeps its sides: no
  left/right flips (the liver is on the patient's right, the spleen on the left, and the model may use that).
- **labels**: IGNORE (255) where a volume's labels are unsure (pseudo_label.py): the loss skips those pixels.
- **contrast phase**: the organs' HU shifted with soft-edged label masks, since the training CTs are of
  one phase each (native, portal-venous, arterial) and LiTS is portal-venous: one enhancement level sets the
  liver, spleen, kidneys and large vessels together, as contrast does (the first round shifted the liver to
  40..170 HU and the kidneys independently).
- **oral contrast**: with --oral-contrast, in that share of the samples whose slice crosses bowel (the
  source's stomach, duodenum, small bowel and colon labels), loops filled with positive oral contrast
  (150..600 HU in the lumen, each loop filled or not, gas left as gas; labelled background).  Abdominal
  CT is read with and without it, and the training CTs have none: a model that never saw a bright loop
  beside the liver takes it for an enhanced kidney.
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
IGNORE = 255  # label of pixels the loss skips
SMALL_SECTION = 0.3  # a liver cross-section below this fraction of the volume's largest is "small"


class CTVolume:
    """One CT volume as axial slices (rows, columns) in HU, with labels (class indices) or None."""

    def __init__(self, name: str, hu: np.ndarray, labels: np.ndarray | None, liver: int = 1, max_side: int = 256,
                 vessels: np.ndarray | None = None, bowel: np.ndarray | None = None):
        """hu, labels: (L, P, S) volumes as fetch-data writes them; vessels, bowel: optional (L, P, S) masks of
        the large abdominal vessels (they enhance with contrast) and of the bowel (oral contrast); slices larger
        than max_side are averaged down by an integer factor first (a 512x512 slice is never shown at more than
        128x128 anyway)."""
        self.name = name
        self.hu = torch.from_numpy(np.ascontiguousarray(np.transpose(hu, (2, 1, 0)), np.float32))  # (S, rows, cols)
        self.labels, self.vessels, self.bowel = (None if a is None else torch.from_numpy(
            np.ascontiguousarray(np.transpose(a, (2, 1, 0)), np.int64)) for a in (labels, vessels, bowel))
        factor = max(1, int(np.ceil(max(self.hu.shape[1:]) / max_side)))
        if factor > 1:
            self.hu = F.avg_pool2d(self.hu[:, None], factor)[:, 0]
            keep = (slice(None), slice(factor // 2, None, factor), slice(factor // 2, None, factor))
            rows, cols = self.hu.shape[1:]
            self.labels, self.vessels, self.bowel = (None if a is None else a[keep][:, :rows, :cols]
                                                     for a in (self.labels, self.vessels, self.bowel))
        body = (self.hu > -500).any(dim=0)
        self.body_box = _box(body)
        if self.labels is not None and (self.labels == liver).any():
            self.liver_box = _box((self.labels == liver).any(dim=0))
            area = (self.labels == liver).flatten(1).sum(dim=1)
            self.liver_slices = torch.nonzero(area).flatten()
            self.small_slices = torch.nonzero((area > 0) & (area < SMALL_SECTION * area.max())).flatten()
        else:
            self.liver_box, self.liver_slices = None, torch.zeros(0, dtype=torch.long)
            self.small_slices = self.liver_slices


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


def _warp_grid(box, rng: np.random.Generator) -> torch.Tensor:
    """Where each output pixel samples a (rows, cols) slice: the box's centre, rotated by up to 15 degrees,
    plus a smooth random displacement of up to ~3% of the box; (SIZE, SIZE, 2) in slice pixels (row, col)."""
    top, bottom, left, right = box
    centre = torch.tensor([(top + bottom) / 2, (left + right) / 2], dtype=torch.float32)
    half = torch.tensor([(bottom - top) / 2, (right - left) / 2], dtype=torch.float32)
    t = (torch.arange(SIZE, dtype=torch.float32) + 0.5) / SIZE * 2 - 1
    v, u = torch.meshgrid(t, t, indexing="ij")
    offsets = torch.stack([v * half[0], u * half[1]], dim=-1)
    th = np.deg2rad(rng.uniform(-15, 15))
    rot = torch.tensor([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]], dtype=torch.float32)
    coarse = torch.from_numpy(rng.normal(0, 0.03, (1, 2, 4, 4)).astype(np.float32)) * half.view(1, 2, 1, 1)
    flow = F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
    return centre + offsets @ rot.T + flow


def _sample_grid(img: torch.Tensor, grid: torch.Tensor, mode: str, fill: float) -> torch.Tensor:
    """img (rows, cols) at the grid's points (slice pixels); outside the slice: fill.  Shrinking images are
    first reduced (antialiased) to about the output's pixel size, as _resample does."""
    img = img.float()
    if mode == "bilinear":
        span = (grid.amax(dim=(0, 1)) - grid.amin(dim=(0, 1))).max().item()
        factor = span / SIZE
        if factor > 1.25:
            size = (max(8, round(img.shape[0] / factor)), max(8, round(img.shape[1] / factor)))
            scale = torch.tensor([size[0] / img.shape[0], size[1] / img.shape[1]])
            img = F.interpolate(img[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
            grid = (grid + 0.5) * scale - 0.5
    h, w = img.shape
    norm = torch.stack([(2 * grid[..., 1] + 1) / w - 1, (2 * grid[..., 0] + 1) / h - 1], dim=-1)  # (x, y)
    out = F.grid_sample((img - fill)[None, None], norm[None], mode=mode, padding_mode="zeros", align_corners=False)
    return out[0, 0] + fill


def liver_crops(vol: CTVolume) -> tuple[torch.Tensor, torch.Tensor]:
    """Every liver slice of a labelled volume as a LiTS crop is made: the liver's bounding box (all slices
    together, no margin) resampled to SIZE x SIZE, the standard window, nothing else; (N, 1, H, W), (N, H, W).
    A validation set from the training sources that looks like the test patient's slices."""
    lo = CT_WINDOW[0] - CT_WINDOW[1] / 2
    ks = vol.liver_slices.tolist()
    x = torch.stack([_resample(vol.hu[k], vol.liver_box, "bilinear", AIR_HU) for k in ks])
    y = torch.stack([_resample(vol.labels[k], vol.liver_box, "nearest", 0) for k in ks]).long()
    return ((x - lo) / CT_WINDOW[1]).clamp(0, 1)[:, None], y


def _soft(mask: torch.Tensor, blur: float = 1.0) -> torch.Tensor:
    return _blur(mask.float(), blur)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    y = F.conv2d(F.pad(x[None, None], (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))[0, 0]


def _contrast_phase(hu: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator,
                    vessels: torch.Tensor | None = None, coupled: bool = True) -> torch.Tensor:
    """The slice as another contrast phase: each organ's median moved to a target, with soft-edged masks.

    coupled: one enhancement level e in [0, 1] (native .. portal-venous) sets every organ as contrast does --
    liver 55 + 70e HU, spleen with it, kidney 30 + 170e, large vessels 40 + 160e (typical values), each
    with some spread -- so an enhanced liver comes with brighter kidneys and vessels, as in real scans.
    Otherwise (the first round) liver 40..170 HU and the kidneys shifted independently."""
    liver = labels == 1
    if not liver.any():
        return hu
    if not coupled:
        shift = rng.uniform(40, 170) - float(hu[liver].median())
        out = hu + shift * _soft(liver)
        out = out + (shift + rng.uniform(-25, 35)) * _soft(labels == 2)  # spleen enhances with the liver
        return out + rng.uniform(0, 150) * _soft(labels == 3)  # kidneys: cortex enhances strongly
    e = rng.uniform(0, 1)
    liver_hu = 55 + 70 * e + rng.normal(0, 12)
    targets = [(liver, liver_hu), (labels == 2, liver_hu + rng.uniform(-10, 25)),
               (labels == 3, 30 + 170 * e + rng.normal(0, 20))]
    if vessels is not None:
        targets.append((vessels.bool() & ~liver, 40 + 160 * e + rng.normal(0, 25)))
    out = hu
    for mask, target in targets:
        if mask.sum() >= 4:
            out = out + (target - float(hu[mask].median())) * _soft(mask)
    return out


def _oral_contrast(hu: torch.Tensor, bowel: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The slice with positive oral contrast: the lumen of each bowel loop (a connected piece of the bowel
    mask in this slice) filled with probability 0.3..1 to one level of 150..600 HU (dilute to dense
    iodine/barium), mottled by +-15%, with a soft edge across the wall (the mask's outer pixel, not filled);
    nothing outside the bowel changes and gas stays gas."""
    from scipy import ndimage

    not_gas = hu > -300
    lumen = ndimage.binary_erosion(bowel.numpy().astype(bool)) & not_gas.numpy()
    loops, count = ndimage.label(lumen)
    if not count:
        return hu
    filled = np.isin(loops, 1 + np.flatnonzero(rng.random(count) < rng.uniform(0.3, 1.0)))
    if not filled.any():
        return hu
    coarse = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(int(rng.integers(2 ** 31))))
    texture = F.interpolate(coarse, size=hu.shape, mode="bicubic", align_corners=False)[0, 0]
    level = rng.uniform(150, 600) * (0.85 + 0.3 * texture)
    weight = _soft(torch.from_numpy(filled), 0.7) * bowel * not_gas
    return hu + (level - hu).clamp(min=0) * weight


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


def sample(vol: CTVolume, rng: np.random.Generator, *, liver_bias: float = 0.75, small_bias: float = 0.0,
           warp: bool = False, coupled: bool = False, organs: bool = True,
           oral: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One augmented 128x128 training slice: image (1, H, W) in [0, 1] and labels (H, W), or None.
    small_bias: of the liver slices drawn, the share taken from the small cross-sections; warp: rotate and
    deform the field of view; coupled: contrast phases as one enhancement level (the liver-ct model's second
    round; the first did none of these); oral: the share of slices crossing bowel given oral contrast."""
    if len(vol.liver_slices) and rng.random() < liver_bias:
        pick = vol.small_slices if len(vol.small_slices) and rng.random() < small_bias else vol.liver_slices
        k = int(pick[int(rng.integers(len(pick)))])
    else:
        k = int(rng.integers(vol.hu.shape[0]))
    hu, labels = vol.hu[k], None if vol.labels is None else vol.labels[k]
    if labels is not None and organs:
        # Not where labels are unsure (pseudo-labels): the unlabelled rim of an organ would keep its old HU.
        if rng.random() < 0.8 and not (labels == IGNORE).any():
            hu = _contrast_phase(hu, labels, rng, None if vol.vessels is None else vol.vessels[k], coupled)
        if rng.random() < 0.75:
            hu = _lesions(hu, labels, rng)
    if oral and vol.bowel is not None and vol.bowel[k].any() and rng.random() < oral:
        hu = _oral_contrast(hu, vol.bowel[k], rng)
    box = _field_of_view(vol, rng)
    if warp:
        grid = _warp_grid(box, rng)
        img = _sample_grid(hu, grid, "bilinear", AIR_HU)
        lab = None if labels is None else _sample_grid(labels, grid, "nearest", 0).long()
    else:
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
