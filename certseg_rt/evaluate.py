"""Evaluate certified segmentation over a dataset folder: per image and overall, resumable.

Dataset layout (``certseg-rt make-phantoms`` writes one):

    DATASET_DIR/images/<name>.png     the image (8/16-bit PNG, or anything io.read_image takes)
    DATASET_DIR/masks/<name>.png      its mask: class index per pixel (same size)

Per image and noise level: clean Dice (segmenter alone on the clean image), certified Dice and IoU
per class (abstained pixels count as false negatives of their true class and never as false
positives), abstain rate, radius.  Each finished (image, sigma) is written at once as its own JSON
record, atomically, so an interrupted run resumes where it stopped; the tables and plots are
rebuilt from the records at the end.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .certify import ABSTAIN, certify
from .errors import CertsegError, InputError
from .io import atomic_path, read_image, write_json
from .metrics import abstain_rate, dice_per_class, iou_per_class

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")


@dataclass
class Sample:
    name: str
    image: Path
    mask: Path | None


def list_dataset(root: Path) -> list[Sample]:
    root = Path(root)
    images, masks = root / "images", root / "masks"
    if not images.is_dir():
        raise CertsegError(f"{root} has no images/ folder; expected DATASET_DIR/images/*.png and "
                           f"DATASET_DIR/masks/*.png (certseg-rt make-phantoms writes one)")
    samples = []
    for path in sorted(images.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        mask = next((m for m in (masks / f"{path.stem}{s}" for s in (".png", ".npy", ".tif")) if m.is_file()), None)
        samples.append(Sample(path.stem, path, mask))
    if not samples:
        raise CertsegError(f"{images} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    return samples


def read_mask(path: Path, num_classes: int, shape: tuple[int, int]) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        mask = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        try:
            with Image.open(path) as im:
                mask = np.asarray(im)
        except (OSError, SyntaxError, ValueError) as e:
            raise InputError(f"cannot read mask {path.name}: {e}")
    if mask.ndim == 3:
        if not (mask == mask[..., :1]).all():
            raise InputError(f"mask {path.name} is a colour image; masks hold one class index per pixel")
        mask = mask[..., 0]
    if mask.shape != shape:
        raise InputError(f"mask {path.name} is {mask.shape[0]}x{mask.shape[1]} but its image is {shape[0]}x{shape[1]}")
    if mask.max(initial=0) >= num_classes:
        raise InputError(f"mask {path.name} has label {int(mask.max())}, the model knows {num_classes} classes")
    return mask.astype(np.uint8)


def evaluate_sample(sample: Sample, backend, clean_fn, classes, *, sigma, n0, n, tau, alpha, seed, correction) -> dict:
    image = read_image(sample.image, backend.channels)
    if sample.mask is None:
        raise InputError(f"no mask for {sample.image.name} in masks/")
    mask = read_mask(sample.mask, len(classes), image.shape[1:])
    clean = clean_fn(image)
    cert = certify(backend, image, n0=n0, n=n, tau=tau, alpha=alpha, seed=seed, correction=correction)
    fg = range(1, len(classes))
    cd, ci = dice_per_class(cert.labels, mask, fg), iou_per_class(cert.labels, mask, fg)
    clean_d = dice_per_class(clean, mask, fg)
    return {
        "image": sample.name, "sigma": sigma, "radius": cert.radius, "abstain_rate": abstain_rate(cert.labels),
        "clean_dice": float(np.mean(list(clean_d.values()))),
        "certified_dice": float(np.mean(list(cd.values()))),
        "certified_iou": float(np.mean(list(ci.values()))),
        **{f"clean_dice_{classes[c]}": v for c, v in clean_d.items()},
        **{f"certified_dice_{classes[c]}": v for c, v in cd.items()},
        **{f"certified_iou_{classes[c]}": v for c, v in ci.items()},
        "seconds": cert.record["seconds"], "backend": cert.record["backend"],
        "parameters": {"n0": n0, "n": n, "tau": tau, "alpha": alpha, "seed": seed, "correction": correction},
        "model_files": cert.record.get("model_files", {}),
        "_labels": cert.labels,  # for the overlay grid; not written to JSON
    }


def record_path(out: Path, config: str, sigma: float, name: str) -> Path:
    return out / "records" / config / f"sigma_{sigma:g}" / f"{name}.json"


def write_tables(out: Path, records: list[dict], failures: list[dict], classes) -> dict:
    """per_image.csv, summary.json (overall means per config and sigma)."""
    columns = [k for k in records[0] if not k.startswith("_") and k not in ("parameters", "model_files")] if records else []
    with atomic_path(out / "per_image.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in records:
        groups.setdefault((r["config"], r["sigma"]), []).append(r)
    overall = []
    for (config, sigma), rows in sorted(groups.items()):
        keys = [k for k in rows[0] if k.startswith(("clean_dice", "certified_dice", "certified_iou", "abstain_rate"))]
        overall.append({"config": config, "sigma": sigma, "radius": rows[0]["radius"], "images": len(rows),
                        **{k: float(np.mean([r[k] for r in rows])) for k in keys}})
    summary = {"overall": overall, "failed": failures, "classes": list(classes),
               "convention": "abstained pixels count as false negatives of their true class, never as false "
                             "positives; Dice and IoU are means over the foreground classes"}
    write_json(out / "summary.json", summary)
    return summary
