"""3-D volumes with their geometry: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) and DICOM series (a folder).

A volume is a stack of 2-D slices, read one at a time (``Volume.read_slice``), so that a 512x512x300 CT is never
held as float32 whole.  Every format gives the same view:

* slices along the file's third voxel axis k (NIfTI, NRRD) or along the series' slice normal (DICOM, sorted by
  ImagePositionPatient), each slice (rows, columns) as ``medical_io.read_nifti`` reads a 2-D NIfTI: the first
  voxel axis i runs along the columns, the second j along the rows, so ``slice[k] = data[:, :, k].T``;
* ``affine``: voxel (i = column, j = row, k = slice, 1) -> RAS+ millimetres, as nibabel states it (NRRD's LPS
  space and DICOM's LPS patient coordinates are flipped to RAS), which is how a mask's grid is compared with its
  image's whatever their formats;
* ``write_mask``: a label volume on the image's own grid, in the image's format (a DICOM series gives NIfTI),
  its header copied (NIfTI qform/sform and codes, NRRD space, directions and origin).

nibabel, pynrrd and pydicom are optional (extras ``nifti``, ``nrrd``, ``dicom``), imported only to read their
format.  Every refusal is one line (``InputError``) naming the file and the fix.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from ..resize import Fit

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES
# The largest volume certified: 2048 slices of 1024x1024 (a whole-body CT is ~1000 slices of 512x512).
MAX_VOXELS = 2048 * 1024 * 1024


@dataclass
class Volume:
    """A volume opened for reading: its header is read, its voxels are read slice by slice."""

    path: Path
    format: str  # "nifti", "nrrd" or "dicom-series"
    shape: tuple[int, int, int]  # (slices, rows, columns)
    affine: np.ndarray  # 4x4: voxel (column, row, slice, 1) -> RAS+ mm
    read_slice: Callable[[int], np.ndarray]  # k -> float32 (rows, columns) in the file's units (e.g. HU)
    write_mask: Callable[[Path, np.ndarray], None]  # (path, uint8 (slices, rows, columns)) -> a file on this grid
    files: list[Path] = field(default_factory=list)  # every file that holds it (hashed for the certificate)
    notes: list[str] = field(default_factory=list)  # remarks for stderr (e.g. uneven DICOM slice spacing)
    mask_suffixes: tuple[str, ...] = NIFTI_SUFFIXES  # what write_mask writes

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(slice, row, column) spacing in mm: the lengths of the affine's k, j and i columns."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(norms[2]), float(norms[1]), float(norms[0])

    def sha256(self) -> str:
        """The file's sha256; for several files (a DICOM series, an .nhdr and its data) the sha256 of their
        'name sha256' lines in name order."""
        from ..manifest import sha256_file

        if len(self.files) == 1:
            return sha256_file(self.files[0])
        lines = "".join(f"{f.name} {sha256_file(f)}\n" for f in sorted(self.files, key=lambda f: f.name))
        return hashlib.sha256(lines.encode()).hexdigest()

    def describe(self) -> dict:
        """The geometry as the certificate records it."""
        return {"format": self.format, "shape": list(self.shape), "axes": "(slices, rows, columns)",
                "spacing_mm": [round(s, 6) for s in self.spacing],
                "affine_ras": np.round(self.affine, 6).tolist()}


def is_volume_path(path) -> bool:
    """A folder (a DICOM series), an NRRD file, or a NIfTI file whose header has more than one slice (or that
    cannot be read as NIfTI: the volume reader's refusal then says why)."""
    path = Path(path)
    if path.is_dir():
        return True
    name = path.name.lower()
    if name.endswith(NRRD_SUFFIXES):
        return True
    if name.endswith(NIFTI_SUFFIXES) and path.is_file():
        from .nifti import nifti_shape

        shape = nifti_shape(path)
        return shape is None or any(d != 1 for d in shape[2:])
    return False


def open_volume(path) -> Volume:
    """The volume at `path` (header read, voxels not yet), or one line saying why it cannot be read."""
    path = Path(path)
    if path.is_dir():
        from .dicom_series import open_dicom_series

        volume = open_dicom_series(path)
    elif not path.exists():
        raise InputError(f"volume {path} does not exist")
    elif path.name.lower().endswith(NIFTI_SUFFIXES):
        from .nifti import open_nifti

        volume = open_nifti(path)
    elif path.name.lower().endswith(NRRD_SUFFIXES):
        from .nrrd import open_nrrd

        volume = open_nrrd(path)
    else:
        raise InputError(f"{path} is not a volume certseg-rt reads: give NIfTI (.nii, .nii.gz), NRRD (.nrrd, "
                         f".nhdr) or a folder holding one DICOM series")
    check_shape(volume.shape, path)
    return volume


def check_shape(shape: tuple[int, int, int], path) -> None:
    from ..limits import check_image_size

    if min(shape) < 1:
        raise InputError(f"volume {path} is empty (shape {tuple(shape)} as (slices, rows, columns))")
    check_image_size(shape[1], shape[2], what=f"a slice of {path}")
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise InputError(f"volume {path} has {np.prod(shape, dtype=np.int64) / 1e6:.0f} million voxels "
                         f"(shape {tuple(shape)}); certseg-rt takes volumes up to {MAX_VOXELS / 1e6:.0f} million: "
                         f"crop or downsample it")


def parse_window(window: str | None) -> tuple[float, float] | None:
    """--window 'LO,HI' (e.g. '-160,240') -> (lo, hi); None when not given."""
    if window is None:
        return None
    try:
        lo, hi = (float(v) for v in window.split(","))
    except ValueError:
        raise InputError(f"--window {window!r} must be two numbers LO,HI (e.g. -160,240 for a CT soft-tissue "
                         f"window in Hounsfield units)")
    return check_window(lo, hi)


def check_window(lo, hi) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InputError(f"--window {lo:g},{hi:g} must be two finite numbers LO < HI (e.g. -160,240 for a CT "
                         f"soft-tissue window in Hounsfield units)")
    return lo, hi


def intensity_window(volume: Volume, window: tuple[float, float] | None = None) -> tuple[float, float]:
    """The window [lo, hi] mapped to [0, 1]: `window` (e.g. a CT window in Hounsfield units), else the volume's
    own minimum and maximum.  Either way every slice is read once first, so a NaN, an Inf or an unreadable
    slice is refused before any sampling."""
    if window is not None:
        lo, hi = check_window(*window)
    low, high = np.inf, -np.inf
    for k in range(volume.shape[0]):
        a = volume.read_slice(k)
        if not np.isfinite(a).all():
            raise InputError(f"slice {k} of {volume.path} contains NaN or Inf values; clean the volume first")
        low, high = min(low, float(a.min())), max(high, float(a.max()))
    return (lo, hi) if window is not None else (low, high)


def to_unit(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 slice in [0, 1]: clipped to the window [lo, hi], then scaled; a constant volume becomes zeros."""
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    a = (np.asarray(a, np.float64) - lo) / (hi - lo)
    return np.clip(a, 0.0, 1.0).astype(np.float32)


@dataclass
class PreparedVolume:
    """A volume opened and windowed (every slice read once: bad voxels are refused before any model runs);
    `fitted` brings it to a backend's input.  What certify and evaluate both need."""

    volume: Volume
    window: tuple[float, float]  # the intensities mapped to [0, 1]
    window_source: str  # "--window" or "volume min-max"
    fit: Fit | None = None

    def fitted(self, backend) -> "PreparedVolume":
        """Checked against the backend (one channel) and fitted to its input size (resize.py)."""
        if getattr(backend, "channels", 1) != 1:
            raise InputError(f"{self.volume.path} is a grayscale volume but the model takes {backend.channels} "
                             f"channels; certify volumes with a 1-channel model")
        _, rows, cols = self.volume.shape
        size = getattr(backend, "input_size", None)
        self.fit = Fit((rows, cols), (rows, cols) if size is None else (int(size[0]), int(size[1])),
                       getattr(backend, "adapter", None))
        return self

    def unit_slice(self, k: int) -> np.ndarray:
        """Slice k as a (1, rows, columns) image in [0, 1] at its own size."""
        return to_unit(self.volume.read_slice(k), *self.window)[None]

    def model_slices(self):
        """Every slice at the model's input size, read lazily (certify_volume streams them)."""
        for k in range(self.volume.shape[0]):
            yield self.fit.image(self.unit_slice(k))

    def labels_back(self, labels: np.ndarray) -> np.ndarray:
        """(D, h, w) at the model's size -> uint8 (D, rows, columns) on the volume's grid (nearest neighbour)."""
        out = np.empty((len(labels), *self.fit.input_size), np.uint8)  # filled in place: no list of planes
        for k, plane in enumerate(labels):
            out[k] = self.fit.labels_back(plane)
        return out

    def describe(self) -> dict:
        lo, hi = self.window
        return {"intensity_window": [lo, hi], "intensity_window_source": self.window_source}

    def radius_in_volume_units(self, radius_at_input: float) -> float | None:
        """The radius in the file's own units (e.g. Hounsfield units): the fixed window's map to [0, 1] (a clip
        and a scale by 1 / (hi - lo)) shrinks distances by at least hi - lo.  None for the volume's min-max
        window, which itself depends on the volume."""
        lo, hi = self.window
        return radius_at_input * (hi - lo) if self.window_source == "--window" else None


def prepare_volume(volume, window: tuple[float, float] | None) -> PreparedVolume:
    """The volume windowed: `window` (e.g. Hounsfield units), else its own min-max; one pass over its slices."""
    lo, hi = intensity_window(volume, window)
    return PreparedVolume(volume, (lo, hi), "--window" if window is not None else "volume min-max")


def read_mask_volume(path, image: Volume) -> tuple[np.ndarray, list[str]]:
    """A label volume on `image`'s grid -> (uint16 (slices, rows, columns), notes).

    The mask may be in any format here (NIfTI, NRRD, a DICOM series) and in another voxel order (axes permuted
    or flipped, as converters write): it is reoriented to the image's.  A mask on another grid (shape, spacing,
    origin or direction) is refused in one line.  Read slice by slice into uint16 (2 bytes a voxel)."""
    mask = open_volume(path)
    labels = np.empty(mask.shape, np.uint16)
    for k in range(mask.shape[0]):
        plane = mask.read_slice(k)
        if not np.isfinite(plane).all() or not np.array_equal(plane, np.round(plane)):
            raise InputError(f"mask {path} has non-integer values; masks hold one class index per voxel: save "
                             f"integer labels (e.g. uint8)")
        if plane.min(initial=0) < 0:
            raise InputError(f"mask {path} has negative label {int(plane.min())}; class indices start at 0")
        labels[k] = np.minimum(plane, 65535)  # beyond any model's classes either way (refused by the caller)
    return on_grid_of(labels, mask.affine, image, path)


def on_grid_of(labels: np.ndarray, affine: np.ndarray, image: Volume, path) -> tuple[np.ndarray, list[str]]:
    """`labels` (slices, rows, columns) with `affine`, brought to `image`'s voxel order; InputError if the
    grids differ.  Affines agree to 1e-3 mm (and 1e-4 in their direction cosines)."""
    def same(a, shape_a):
        return tuple(shape_a) == tuple(image.shape) and np.allclose(a, image.affine, rtol=1e-4, atol=1e-3)

    if same(affine, labels.shape):
        return labels, []
    # Another voxel order of the same grid: permute / flip the axes (nibabel's orientation tools, on (i, j, k)).
    from nibabel import orientations as ornt

    xyz = labels.transpose(2, 1, 0)  # (column, row, slice) = voxel axes (i, j, k)
    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.io_orientation(image.affine))
    moved = ornt.apply_orientation(xyz, transform)
    moved_affine = affine @ ornt.inv_ornt_aff(transform, xyz.shape)
    moved = moved.transpose(2, 1, 0)
    if same(moved_affine, moved.shape):
        return np.ascontiguousarray(moved), [f"mask {Path(path).name} reoriented to its image's voxel order"]
    why = (f"shape {tuple(labels.shape)} against the image's {tuple(image.shape)}"
           if sorted(labels.shape) != sorted(image.shape) else
           f"affine (voxel -> RAS mm) {_affine_text(affine)} against the image's {_affine_text(image.affine)}")
    raise InputError(f"mask {path} is not on its image's grid ({why}, as (slices, rows, columns)); resample the "
                     f"mask onto the image (e.g. nearest neighbour in 3D Slicer or SimpleITK)")


def _affine_text(affine: np.ndarray) -> str:
    return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in np.asarray(affine)[:3]) + "]"


def write_nifti_mask(path: Path, labels: np.ndarray, affine: np.ndarray, header=None) -> None:
    """uint8 labels (slices, rows, columns) as NIfTI at `path` (.nii or .nii.gz), atomically; with `header`
    (nibabel's) its qform and sform, with their codes, are kept."""
    import gzip

    import nibabel as nib

    from ..io import atomic_path

    data = np.asarray(labels, np.uint8).transpose(2, 1, 0)  # -> (column, row, slice) = (i, j, k)
    image = nib.Nifti1Image(data, affine, header=None if header is None else header.copy())
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    if header is not None:
        image.set_qform(header.get_qform(), code=int(header["qform_code"]))
        image.set_sform(header.get_sform(), code=int(header["sform_code"]))
    else:
        image.set_qform(affine, code=1)  # scanner coordinates
        image.set_sform(affine, code=1)
    image.header["descrip"] = b"certseg-rt certified labels; 255 = abstain"
    raw = image.to_bytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(raw, compresslevel=6) if str(path).lower().endswith(".gz") else raw)


def check_mask_suffix(out, volume: Volume) -> None:
    """--out must name a file of the format the mask is written in (the image's; NIfTI for DICOM)."""
    if not str(out).lower().endswith(volume.mask_suffixes):
        kind = {"nrrd": "NRRD, like its image", "dicom-series": "NIfTI (a DICOM series' mask is written as NIfTI)",
                "nifti": "NIfTI, like its image"}[volume.format]
        raise InputError(f"--out {out} must end in {' or '.join(volume.mask_suffixes)}: the mask of {volume.path} is "
                         f"written as {kind}")
    if volume.format == "dicom-series":  # its NIfTI writer: known missing before any work, not after
        from ..medical_io import require

        require("nibabel", "nifti", out)
