"""NIfTI volumes (.nii, .nii.gz) with nibabel: slices read one at a time, the mask written with the same header."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..medical_io import one_line, require
from . import Volume, write_nifti_mask

_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, IndexError)


def _load(path: Path):
    nib = require("nibabel", "nifti", path)
    try:
        # keep_file_open: a .nii.gz is read slice after slice through one open stream (forward seeks), not
        # decompressed again from its start for every slice.
        return nib.load(str(path), keep_file_open=True)
    except (nib.filebasedimages.ImageFileError, *_READ_ERRORS) as e:
        raise InputError(f"cannot read {path} as NIfTI ({one_line(e)}); the file is truncated or not NIfTI: give a "
                         f".nii or .nii.gz file")


def nifti_shape(path: Path) -> tuple[int, ...] | None:
    """The voxel shape in the header, or None when the file cannot be read as NIfTI (the readers then say why)."""
    try:
        return tuple(int(d) for d in _load(Path(path)).shape)
    except InputError:
        return None


def open_nifti(path: Path) -> Volume:
    img = _load(path)
    shape = tuple(int(d) for d in img.shape)
    if len(shape) < 3 and len(shape) != 2:
        raise InputError(f"{path} has shape {shape}; a volume has three axes (x, y, slices)")
    if len(shape) == 2:
        shape = (*shape, 1)
    extra = [d for d in shape[3:] if d != 1]
    if extra:
        raise InputError(f"{path} is a {len(shape)}-D image of shape {shape} (time points or channels after the "
                         f"third axis); certify one 3-D volume: e.g. nibabel.save(img.slicer[..., t], 'vol_t.nii.gz')")
    if img.get_data_dtype().kind not in "iuf" or img.get_data_dtype().names:
        raise InputError(f"{path} holds {img.get_data_dtype()} voxels (RGB or complex); give a grayscale volume")
    x, y, z = shape[:3]
    tail = (0,) * (len(img.shape) - 3)

    def read_slice(k: int) -> np.ndarray:
        try:
            plane = np.asarray(img.dataobj[(slice(None), slice(None), k, *tail)], dtype=np.float32)
        except Exception as e:  # noqa: BLE001 - OSError, EOFError, zlib.error, gzip.BadGzipFile: a damaged file
            raise InputError(f"cannot read slice {k} of {path} ({type(e).__name__}: {one_line(e)}); the file is "
                             f"truncated or corrupt: re-export it")
        return plane.reshape(x, y).T  # (rows, columns), as medical_io.read_nifti reads a 2-D slice

    header = img.header

    def write_mask(out: Path, labels: np.ndarray) -> None:
        write_nifti_mask(out, labels, img.affine, header)

    return Volume(path=Path(path), format="nifti", shape=(z, y, x), affine=np.asarray(img.affine, np.float64),
                  read_slice=read_slice, write_mask=write_mask, files=[Path(path)])
