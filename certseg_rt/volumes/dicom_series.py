"""A DICOM series (a folder of single-frame slices) as a volume, with pydicom.

Headers are read first (no pixels): the folder must hold one series (one SeriesInstanceUID) of one orientation
(ImageOrientationPatient) and one size (Rows x Columns, PixelSpacing).  Slices are sorted by the projection of
ImagePositionPatient on the slice normal (row direction x column direction) and read one at a time as
``medical_io.read_dicom`` reads a file (RescaleSlope / RescaleIntercept applied).

The grid: DICOM places pixel (row r, column c) of slice k at
``IPP_0 + c * dc * X + r * dr * Y + k * step`` in LPS patient coordinates (X, Y the row and column direction
cosines, (dr, dc) = PixelSpacing, step the mean step between sorted slice positions).  The affine of voxel
(i = c, j = r, k) flips x and y to RAS+, as the mask's NIfTI states it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..medical_io import one_line, read_dicom, require
from . import Volume, write_nifti_mask

_PARSE_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError)
_TOLERANCE = 1e-4  # direction cosines, and positions / spacings in mm relative to the slice step


def _headers(folder: Path):
    """(file, dataset without pixels) of every DICOM image file in the folder; non-DICOM files are skipped."""
    pydicom = require("pydicom", "dicom", folder)
    found, skipped = [], 0
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            skipped += 1  # a README, a checksum list: not part of the series
            continue
        except _PARSE_ERRORS as e:
            raise InputError(f"cannot read {f} as DICOM ({one_line(e)}); the file is truncated or damaged: remove or "
                             f"re-export it")
        if "Rows" not in ds:  # a DICOMDIR, a report, a structure set: no image
            skipped += 1
            continue
        found.append((f, ds))
    return found, skipped


def _vector(ds, name: str, size: int, f: Path) -> np.ndarray:
    value = ds.get(name)
    try:
        v = np.asarray([float(x) for x in value], np.float64)
    except (TypeError, ValueError):
        v = None
    if v is None or v.shape != (size,) or not np.isfinite(v).all():
        raise InputError(f"{f} has no usable {name}; a series can be stacked only with each slice's position and "
                         f"orientation: convert it with a DICOM converter (e.g. dcm2niix) or give a NIfTI volume")
    return v


def open_dicom_series(folder: Path) -> Volume:
    folder = Path(folder)
    found, skipped = _headers(folder)
    if not found:
        others = f" ({skipped} other files)" if skipped else ""
        raise InputError(f"{folder} is a folder that holds no DICOM images{others}; give an image or volume file, or "
                         f"a folder with the slices of one DICOM series")
    series: dict[str, list] = {}
    for f, ds in found:
        series.setdefault(str(ds.get("SeriesInstanceUID", "?")), []).append((f, ds))
    if len(series) > 1:
        parts = ", ".join(f"{uid[-12:]} ({len(v)} files)" for uid, v in series.items())
        raise InputError(f"DICOM folder {folder} mixes {len(series)} series (SeriesInstanceUID ...{parts}); give a "
                         f"folder holding one series: move each series into its own folder")
    sizes = {(int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)) for _, ds in found}
    if len(sizes) > 1:
        raise InputError(f"DICOM folder {folder} mixes slice sizes ({', '.join(f'{r}x{c}' for r, c in sorted(sizes))}"
                         f"); a volume's slices share one size: give one series per folder")
    for f, ds in found:
        if int(ds.get("NumberOfFrames") or 1) > 1 or int(ds.get("SamplesPerPixel") or 1) > 1:
            raise InputError(f"{f} is a multi-frame or colour DICOM; a series folder holds single-frame grayscale "
                             f"slices")
    orientations = np.stack([_vector(ds, "ImageOrientationPatient", 6, f) for f, ds in found])
    if np.abs(orientations - orientations[0]).max() > _TOLERANCE:
        worst = int(np.abs(orientations - orientations[0]).max(axis=1).argmax())
        raise InputError(f"DICOM folder {folder} mixes slice orientations ({found[worst][0].name} differs from "
                         f"{found[0][0].name} in ImageOrientationPatient); give one series of one orientation")
    row_dir, col_dir = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.stack([_vector(ds, "ImagePositionPatient", 3, f) for f, ds in found])
    spacings = {tuple(np.round(_pixel_spacing(ds), 6)) for _, ds in found}
    if len(spacings) > 1:
        raise InputError(f"DICOM folder {folder} mixes pixel spacings ({sorted(spacings)}); give one series")
    order = np.argsort(positions @ normal, kind="stable")
    found, positions = [found[i] for i in order], positions[order]
    along = positions @ normal
    notes = [f"{skipped} files of {folder.name} are not DICOM images and were skipped"] if skipped else []
    if len(found) > 1:
        steps = np.diff(along)
        if steps.min() <= _TOLERANCE:
            i = int(steps.argmin())
            raise InputError(f"{found[i][0].name} and {found[i + 1][0].name} of {folder} lie at the same position "
                             f"along the slice normal (repeated acquisitions or two series in one); give one "
                             f"series with one slice per position")
        step = (positions[-1] - positions[0]) / (len(found) - 1)
        if np.abs(steps - steps.mean()).max() > 0.01 * steps.mean():
            notes.append(f"slice spacing of {folder.name} varies ({steps.min():.3g} to {steps.max():.3g} mm): the "
                         f"mask's affine uses the mean step {steps.mean():.4g} mm")
    else:
        ds = found[0][1]
        thickness = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        step = normal * thickness
    dr, dc = _pixel_spacing(found[0][1])
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = dc * row_dir, dr * col_dir, step, positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS+
    rows, cols = sizes.pop()
    files = [f for f, _ in found]

    def read_slice(k: int) -> np.ndarray:
        return read_dicom(files[k])

    def write_mask(out: Path, labels: np.ndarray) -> None:
        write_nifti_mask(out, labels, affine)

    return Volume(path=folder, format="dicom-series", shape=(len(files), rows, cols), affine=affine,
                  read_slice=read_slice, write_mask=write_mask, files=files, notes=notes)


def _pixel_spacing(ds) -> tuple[float, float]:
    """(between rows, between columns) in mm; 1 mm when the file does not say (secondary captures)."""
    value = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        dr, dc = (float(v) for v in value)
    except (TypeError, ValueError):
        return 1.0, 1.0
    return (dr, dc) if dr > 0 and dc > 0 else (1.0, 1.0)
