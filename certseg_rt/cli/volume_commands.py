"""`certseg-rt certify VOLUME`: a NIfTI, NRRD or DICOM series certified whole (volume_certify.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from .. import __version__
from .common import note


def open_volume_for_certify(path: Path, out: Path | None, window: str | None):
    """The volume opened, --out checked and every slice read once for its window (NaN / Inf / unreadable slices
    refused), all before the model is loaded: a bad volume costs no model load."""
    from ..volumes import check_mask_suffix, open_volume, parse_window, prepare_volume

    volume = open_volume(path)
    if out is not None:
        check_mask_suffix(out, volume)
    prepared = prepare_volume(volume, parse_window(window))
    for line in volume.notes:  # after the checks: a refused volume is one line, without remarks before it
        note(line)
    if out is not None and volume.format == "dicom-series":
        note(f"the mask of the DICOM series {volume.path.name} is written as NIfTI, its affine derived from the series "
             f"(ImagePositionPatient, ImageOrientationPatient, PixelSpacing)")
    return prepared


def label_counts(labels: np.ndarray) -> np.ndarray:
    """Voxels per label value (256), slice by slice: bincount converts its input to intp, 8 bytes a voxel."""
    return sum((np.bincount(plane.ravel(), minlength=256) for plane in labels.reshape(-1, *labels.shape[-2:])),
               np.zeros(256, np.int64))


def per_class(counts: np.ndarray, classes) -> dict[str, int]:
    return {name: int(counts[i]) for i, name in enumerate(classes)}


def volume_summary(volume, prepared, cert, classes, labels: np.ndarray, out: Path | None) -> dict:
    """The certificate of a volume as JSON-ready data; field names are documented in README (Volumes)."""
    from ..volume_certify import volume_statement

    fit = prepared.fit
    radius_in = fit.radius_at_input(cert.radius)
    voxels = int(cert.labels.size)
    slice_counts = [label_counts(plane) for plane in labels]
    per_slice = [{"slice": d, "certified_voxels": per_class(c, classes), "abstain_fraction": float(c[255] / c.sum()),
                  "radius": cert.radius, "radius_at_input_resolution": radius_in}
                 for d, c in enumerate(slice_counts)]
    counts = sum(slice_counts)
    return {
        "volume": str(volume.path), "volume_sha256": volume.sha256(), "geometry": volume.describe(),
        "classes": list(classes),
        "certified_voxels": per_class(counts, classes),
        "abstain_fraction": float(counts[255] / counts.sum()),
        "certified_voxels_at_model_resolution": per_class(label_counts(cert.labels), classes),
        "abstain_fraction_at_model_resolution": cert.abstain_fraction,
        "radius": cert.radius, "radius_at_input_resolution": radius_in,
        "radius_in_volume_units": prepared.radius_in_volume_units(radius_in),
        "family": {"scope": "volume", "hypotheses": voxels, "correction": cert.correction, "alpha": cert.alpha},
        "statement": volume_statement(cert.radius, radius_in, cert.alpha, cert.tau, voxels, cert.correction),
        "noise": {"seed": cert.seed, "first_sample_of_slice": f"d * (n0 + n) = d * {cert.n0 + cert.n}"},
        "per_slice": per_slice,
        "sigma": cert.sigma, "tau": cert.tau, "alpha": cert.alpha, "n0": cert.n0, "n": cert.n, "seed": cert.seed,
        "correction": cert.correction, "abstain_label": 255,
        **prepared.describe(), **fit.describe(), **cert.record,
        "mask": None if out is None else str(out),
        "certseg_rt": __version__,
    }


def certify_volume_file(prepared, backend, classes, *, n0, n, tau, alpha, seed, correction, out, as_json):
    """Certify every slice, the whole volume as one family; write the mask on the volume's grid; report."""
    from tqdm import tqdm

    from ..volume_certify import certify_volume

    volume = prepared.volume
    depth = volume.shape[0]
    prepared.fitted(backend)
    if prepared.fit.resized:
        note(f"slices of {volume.path.name} are {volume.shape[1]}x{volume.shape[2]}: certified at the model's "
             f"{prepared.fit.model_size[0]}x{prepared.fit.model_size[1]}, mask mapped back by nearest neighbour")
    with tqdm(total=depth, desc=f"certify {volume.path.name}", unit="slice", file=sys.stderr, leave=False,
              disable=None) as bar:
        cert = certify_volume(backend, prepared.model_slices(), depth, n0=n0, n=n, tau=tau, alpha=alpha,
                              seed=seed, correction=correction, on_slice=lambda d: bar.update(1))
    labels = prepared.labels_back(cert.labels)
    summary = volume_summary(volume, prepared, cert, classes, labels, out)
    if out is not None:
        volume.write_mask(out, labels)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        counts = ", ".join(f"{k} {v}" for k, v in summary["certified_voxels"].items())
        click.echo(f"{volume.path}: {depth} slices certified jointly ({summary['family']['hypotheses']} voxels, "
                   f"{cert.correction} at alpha {alpha:g}): radius {cert.radius:.4f} per slice "
                   f"({summary['radius_at_input_resolution']:.4f} at the slices' resolution), abstained "
                   f"{summary['abstain_fraction']:.1%}, certified voxels: {counts} "
                   f"({cert.record['seconds']:.1f} s, {cert.record['backend']})")
