"""Evaluate certified segmentation over a dataset folder: per image and overall, resumable.

Dataset layout (``certseg-rt make-phantoms`` writes one):

    DATASET_DIR/images/<name>.png     the image (8/16-bit PNG, or anything io.read_image takes)
    DATASET_DIR/masks/<name>.png      its mask: class index per pixel (same size)

Images may be PNG, JPEG, TIFF, .npy, NIfTI (.nii, .nii.gz) or DICOM (.dcm); masks PNG, .npy, TIFF,
NIfTI or DICOM, holding integer class indices.  The sample name is the file name without its suffix
("a.nii.gz" is "a").  2-D NIfTI and DICOM images are min-max normalised and read in the same orientation
as their masks (see medical_io).  Volumes -- a NIfTI of several slices, NRRD (.nrrd, .nhdr), or a folder
images/<name>/ holding one DICOM series -- are certified whole against a mask volume on their grid
(evaluate_volume.py).

``evaluate_samples`` certifies a data set's 2-D images through ``certify.certify_many``, so a runner that packs
images (torch-cuda fused and careful) puts several images' samples in one device batch; every other backend
certifies them one by one, as ``evaluate_sample`` (a Ray worker's unit) does.

Per image and noise level: clean Dice (segmenter alone on the clean image), certified Dice and IoU
per class (abstained pixels count as false negatives of their true class and never as false
positives), abstain rate, radius.  Each finished (image, sigma) is written at once as its own JSON
record, atomically, so an interrupted run resumes where it stopped; the tables and plots are
rebuilt from the records at the end.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .certify import certify, certify_many
from .errors import CertsegError, InputError
from .io import atomic_path, read_image, write_json
from .medical_io import MEDICAL_SUFFIXES, is_medical, read_label_volume
from .volumes import NRRD_SUFFIXES, is_volume_path
from .metrics import abstain_rate, dice_per_class, iou_per_class
from .resize import fit_to_model
from .runtime.sampling import equal_batches

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", *MEDICAL_SUFFIXES, *NRRD_SUFFIXES)
MASK_SUFFIXES = (".png", ".npy", ".tif", *MEDICAL_SUFFIXES, *NRRD_SUFFIXES)


@dataclass
class Sample:
    name: str
    image: Path
    mask: Path | None


def sample_name(path: Path) -> str | None:
    """The image's file name without its suffix ("a.nii.gz" -> "a", where Path.stem gives "a.nii"); None
    if it is not an image certseg-rt reads."""
    if path.is_dir():  # a DICOM series
        return None if path.name.startswith(".") else path.name
    lower = path.name.lower()
    suffix = next((s for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True) if lower.endswith(s)), None)
    return path.name[:-len(suffix)] if suffix else None


def list_dataset(root: Path) -> list[Sample]:
    root = Path(root)
    images, masks = root / "images", root / "masks"
    if not images.is_dir():
        raise CertsegError(f"{root} has no images/ folder; expected DATASET_DIR/images/*.png and "
                           f"DATASET_DIR/masks/*.png (certseg-rt make-phantoms writes one)")
    samples = []
    for path in sorted(images.iterdir()):
        name = sample_name(path)
        if not name:
            continue
        mask = next((m for m in (masks / f"{name}{s}" for s in MASK_SUFFIXES) if m.is_file()), None)
        if mask is None and (masks / name).is_dir():  # a DICOM series mask
            mask = masks / name
        samples.append(Sample(name, path, mask))
    if not samples:
        raise CertsegError(f"{images} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    return samples


def read_mask(path: Path, num_classes: int, shape: tuple[int, int]) -> np.ndarray:
    if is_medical(path):  # NIfTI / DICOM: integer labels, same orientation as read_image gives the image
        mask = read_label_volume(path)
    elif path.suffix.lower() == ".npy":
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
        unknown = sorted(int(v) for v in np.unique(mask) if v >= num_classes)
        if num_classes == 2 and unknown == [255] and set(np.unique(mask).tolist()) <= {0, 255}:
            raise InputError(f"mask {path.name} holds 0/255 (a black-and-white binary mask); masks hold class "
                             f"indices: save it as 0/1 (e.g. mask // 255)")
        raise InputError(f"mask {path.name} has labels {unknown[:5]} the model does not know (it has "
                         f"{num_classes} classes, 0..{num_classes - 1}); check that the dataset and the model match")
    return mask.astype(np.uint8)


FAILURES = (CertsegError, ValueError)  # what fails one image (its record says why), not the run
PACK_IMAGES = 64  # images certified together where the runner packs them (their selection counts wait)


def evaluate_sample(sample: Sample, backend, clean_fn, classes, *, sigma, n0, n, tau, alpha, seed, correction,
                    window=None) -> dict:
    """One image certified and scored against its mask, at the image's own size: an image of another size
    than the model's input is resized to it and the labels mapped back (resize.py); the radius is the
    model's, `radius_at_input_resolution` what it means for the original image.  A volume is certified whole
    (evaluate_volume.py; `window`: its intensity window, None for its min-max)."""
    params = {"n0": n0, "n": n, "tau": tau, "alpha": alpha, "seed": seed, "correction": correction,
              **({"window": list(window)} if window is not None else {})}
    if is_volume_path(sample.image):
        from .evaluate_volume import evaluate_volume_sample

        return evaluate_volume_sample(sample, backend, clean_fn, classes, sigma, params)
    x, record = _prepare(sample, backend, clean_fn, classes, sigma, params)
    return record(certify(backend, x, n0=n0, n=n, tau=tau, alpha=alpha, seed=seed, correction=correction))


def evaluate_samples(samples: list[Sample], backend, clean_fn, classes, *, sigma, n0, n, tau, alpha, seed, correction,
                     window=None) -> Iterator[tuple[int, dict | Exception]]:
    """(index, record) or (index, the error) for each sample, the records as evaluate_sample gives them.  Where the
    runner packs images, the 2-D images are certified together (certify_many) in the fewest equal chunks of at most
    PACK_IMAGES samples, each padded to that size (one batch size for the data set); should the sampling refuse a
    chunk, its images are evaluated alone, each with its own error or record.  Other runners: one image at a time."""
    kw = {"n0": n0, "n": n, "tau": tau, "alpha": alpha, "seed": seed, "correction": correction}
    params = {**kw, **({"window": list(window)} if window is not None else {})}

    def alone(sample):
        return _attempt(evaluate_sample, sample, backend, clean_fn, classes, sigma=sigma, window=window, **kw)

    size = equal_batches(max(len(samples), 1), PACK_IMAGES)[0] if getattr(backend, "packs_images", False) else 1
    for c in range(0, len(samples), size):
        images = []  # (index, sample, x, record)
        for i, sample in enumerate(samples[c:c + size], c):
            read = alone(sample) if is_volume_path(sample.image) else \
                _attempt(_prepare, sample, backend, clean_fn, classes, sigma, params)
            if isinstance(read, tuple):
                images.append((i, sample, *read))
            else:  # a volume's record (certified whole), or why an image cannot be read
                yield i, read
        try:
            certs = certify_many(backend, [x for _, _, x, _ in images], pad_to=size, **kw)
        except FAILURES as e:
            for i, sample, _, _ in images:
                yield i, e if len(images) == 1 else alone(sample)
            continue
        for (i, _, _, record), cert in zip(images, certs):
            yield i, _attempt(record, cert)


def _prepare(sample: Sample, backend, clean_fn, classes, sigma, params: dict):
    """(x, record): the 2-D image as the model takes it, and what turns its certificate into the image's record."""
    image = read_image(sample.image, backend.channels)
    if sample.mask is None:
        raise InputError(f"no mask for {sample.image.name} in masks/")
    mask = read_mask(sample.mask, len(classes), image.shape[1:])
    fit = fit_to_model(image, getattr(backend, "input_size", None), getattr(backend, "adapter", None))
    x = fit.image(image)
    clean = fit.labels_back(clean_fn(x))

    def record(cert) -> dict:
        labels = fit.labels_back(cert.labels)
        return {**scores(sample.name, labels, clean, mask, classes, cert, fit, sigma, params),
                "_labels": labels}  # for the overlay grid; not written to JSON
    return x, record


def _attempt(fn, *args, **kw):
    """fn's result, or the error that fails this one image."""
    try:
        return fn(*args, **kw)
    except FAILURES as e:
        return e


def scores(name: str, labels, clean, mask, classes, cert, fit, sigma, params: dict) -> dict:
    """The record of one certified image (or volume: its arrays hold every voxel) against its mask."""
    fg = range(1, len(classes))
    cd, ci = dice_per_class(labels, mask, fg), iou_per_class(labels, mask, fg)
    clean_d = dice_per_class(clean, mask, fg)
    return {
        "image": name, "modality": cert.record.get("modality") or "unknown", "sigma": sigma,
        "radius": cert.radius, "radius_at_input_resolution": fit.radius_at_input(cert.radius),
        "input_size": "x".join(map(str, (*labels.shape[:-2], *fit.input_size))), "abstain_rate": abstain_rate(labels),
        "clean_dice": float(np.mean(list(clean_d.values()))),
        "certified_dice": float(np.mean(list(cd.values()))),
        "certified_iou": float(np.mean(list(ci.values()))),
        **{f"clean_dice_{classes[c]}": v for c, v in clean_d.items()},
        **{f"certified_dice_{classes[c]}": v for c, v in cd.items()},
        **{f"certified_iou_{classes[c]}": v for c, v in ci.items()},
        "seconds": cert.record["seconds"], "backend": cert.record["backend"], "parameters": params,
        "model_files": cert.record.get("model_files", {}),
    }


def record_path(out: Path, config: str, sigma: float, name: str) -> Path:
    return out / "records" / config / f"sigma_{sigma:g}" / f"{name}.json"


HEADLINE = ("clean_dice", "certified_dice", "certified_iou")


def scored_over(record: dict, scored: list[str] | None) -> dict:
    """The record with its headline Dice / IoU the mean over the classes named in `scored` only (None: as
    recorded, over every foreground class).  A data set that labels only some of the model's classes (LiTS:
    liver, not the spleen or kidneys) would otherwise average in classes its masks never mark.  Records keep
    every class's columns, so the choice is made when the tables are written and resuming is unaffected."""
    if not scored:
        return record
    return {**record, **{key: float(np.mean([record[f"{key}_{name}"] for name in scored])) for key in HEADLINE}}


def write_tables(out: Path, records: list[dict], failures: list[dict], classes, scored: list[str] | None = None) -> dict:
    """per_image.csv, summary.json (overall means per config and sigma); headline columns over `scored`
    (scored_over)."""
    records = [scored_over(r, scored) for r in records]
    nested = ("parameters", "model_files", "volume")  # in the JSON records, not in the CSV
    columns = [k for k in records[0] if not k.startswith("_") and k not in nested] if records else []
    with atomic_path(out / "per_image.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    groups: dict[tuple[str, str, float], list[dict]] = {}
    for r in records:
        groups.setdefault((r.get("modality", "unknown"), r["config"], r["sigma"]), []).append(r)
    overall = []
    for (modality, config, sigma), rows in sorted(groups.items()):
        keys = [k for k in rows[0] if k.startswith(("clean_dice", "certified_dice", "certified_iou", "abstain_rate"))]
        overall.append({"modality": modality, "config": config, "sigma": sigma, "radius": rows[0]["radius"],
                        "images": len(rows),
                        **{k: float(np.mean([r[k] for r in rows])) for k in keys}})
    summary = {"overall": overall, "failed": failures, "classes": list(classes),
               "scored_classes": list(scored or classes[1:]),
               "convention": "abstained pixels count as false negatives of their true class, never as false "
                             "positives; Dice and IoU are means over the scored foreground classes"}
    write_json(out / "summary.json", summary)
    return summary
