"""One volume of a data set certified whole and scored against its mask volume (``certseg-rt evaluate``).

Layout: ``DATASET_DIR/images/<name>.nii.gz`` (or .nii, .nrrd, .nhdr, or a folder ``<name>/`` holding one DICOM
series) and ``DATASET_DIR/masks/<name>.nii.gz`` (or .nrrd, .nhdr, a DICOM series folder), on the image's grid.
The record has the fields of a 2-D image's (evaluate.evaluate_sample) computed over every voxel -- the volume's
Dice -- plus its shape, the joint family's size, and the slice shown in the overlays.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError


def evaluate_volume_sample(sample, backend, clean_fn, classes, sigma, params: dict) -> dict:
    """The volume certified jointly (volume_certify) and scored voxel by voxel against its mask volume.
    `params`: the record's parameters (n0, n, tau, alpha, seed, correction; window when given)."""
    from .evaluate import scores
    from .volume_certify import certify_volume
    from .volumes import open_volume, prepare_volume, read_mask_volume

    volume = open_volume(sample.image)
    if sample.mask is None:
        raise InputError(f"no mask for {sample.image.name} in masks/")
    mask, _ = read_mask_volume(sample.mask, volume)  # on the image's grid, or one line why not
    if mask.max(initial=0) >= len(classes):
        unknown = sorted(int(v) for v in np.unique(mask) if v >= len(classes))
        raise InputError(f"mask {sample.mask.name} has labels {unknown[:5]} the model does not know (it has "
                         f"{len(classes)} classes, 0..{len(classes) - 1}); check that the dataset and the model match")
    prepared = prepare_volume(volume, params.get("window")).fitted(backend)
    clean = prepared.labels_back(np.stack([clean_fn(x) for x in prepared.model_slices()]))
    cert = certify_volume(backend, prepared.model_slices(), volume.shape[0],
                          **{k: v for k, v in params.items() if k != "window"})
    labels = prepared.labels_back(cert.labels)
    shown = int(np.argmax((mask > 0).sum(axis=(1, 2))))  # the slice with the most foreground, for the overlays
    return {
        **scores(sample.name, labels, clean, mask, classes, cert, prepared.fit, sigma, params),
        "volume": {"slices": volume.shape[0], "hypotheses": int(cert.labels.size), "family": "volume",
                   "overlay_slice": shown, **prepared.describe(), **volume.describe()},
        "_labels": labels[shown],  # the overlay grid shows one slice; not written to JSON
    }


def overlay_image(sample, record: dict, channels: int) -> np.ndarray:
    """The image an overlay tile shows: the image itself, or the slice of a volume its record names, windowed as
    it was certified."""
    if "volume" not in record:
        from .io import read_image

        return read_image(sample.image, channels)
    from .volumes import open_volume, to_unit

    shown = record["volume"]
    return to_unit(open_volume(sample.image).read_slice(int(shown["overlay_slice"])), *shown["intensity_window"])[None]


def volume_window(window: str | None, samples, ray_address) -> tuple[float, float] | None:
    """--window parsed; and volumes that cannot travel to Ray workers (a folder, a detached header) refused."""
    from pathlib import Path

    from .volumes import is_volume_path, parse_window

    if ray_address is not None:
        for s in samples:
            if Path(s.image).is_dir() or str(s.image).lower().endswith(".nhdr") or \
                    (s.mask is not None and (Path(s.mask).is_dir() or str(s.mask).lower().endswith(".nhdr"))):
                raise InputError(f"{s.image} is a DICOM series folder or a detached NRRD header, which --ray does not "
                                 f"ship to its workers; convert it to NIfTI (.nii.gz) or evaluate without --ray")
    if window is not None and not any(is_volume_path(s.image) for s in samples):
        raise InputError("--window applies to volumes, and this data set has none")
    return parse_window(window)
