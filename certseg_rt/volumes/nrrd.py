"""NRRD volumes (.nrrd, .nhdr with its data file) with pynrrd; the mask is written as NRRD on the same space.

pynrrd reads the voxels whole (in their stored type) with ``index_order='F'``, so ``data[i, j, k]`` is indexed as
nibabel indexes NIfTI (i fastest in the file).  The geometry is the header's ``space``, ``space directions`` and
``space origin``; the affine in RAS+ flips the axes a named space counts the other way (LPS: x and y).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..medical_io import one_line, require
from . import Volume

# The sign of each world axis against RAS+ for the named spaces (the NRRD format's list; "-time" variants too).
_SPACE_SIGNS = {
    "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
    "left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1),
}


def _signs(space: str | None) -> tuple[int, int, int] | None:
    if space is None:
        return None
    name = space.lower().removesuffix("-time")
    name = name[:-1] if name in ("rast", "last", "lpst") else name
    return _SPACE_SIGNS.get(name)


def nrrd_affine(header: dict, ndim: int) -> tuple[np.ndarray, list[str]]:
    """4x4 voxel (i, j, k) -> RAS+ mm from the header, and notes on what had to be assumed."""
    affine, notes = np.eye(4), []
    directions = header.get("space directions")
    if directions is not None:
        rows = [np.asarray(d, np.float64) for d in directions]
        spatial = [r for r in rows if r.size == 3 and np.isfinite(r).all()]
        if len(spatial) != ndim:
            raise InputError(f"space directions of {ndim} axes expected, the header gives {len(spatial)} usable ones")
        for axis, r in enumerate(spatial):
            affine[:3, axis] = r
        origin = header.get("space origin")
        if origin is not None and np.isfinite(np.asarray(origin, np.float64)).all():
            affine[:3, 3] = np.asarray(origin, np.float64)
        signs = _signs(header.get("space"))
        if signs is None:
            notes.append(f"NRRD space {header.get('space')!r} is not an anatomical one: its coordinates are taken "
                         f"as RAS")
        else:
            affine = np.diag([*signs, 1]) @ affine
    else:
        spacings = header.get("spacings")
        if spacings is not None:
            for axis, s in enumerate(list(spacings)[:ndim]):
                if np.isfinite(s):
                    affine[axis, axis] = float(s)
        notes.append("the NRRD header has no space directions: the grid is taken from its spacings, axis-aligned")
    return affine, notes


def open_nrrd(path: Path) -> Volume:
    nrrd = require("nrrd", "nrrd", path)
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as e:  # noqa: BLE001 - NRRDError, OSError, ValueError, zlib.error: a bad header or data
        raise InputError(f"cannot read {path} as NRRD ({type(e).__name__}: {one_line(e)}); the file (or its data "
                         f"file) is missing, truncated or not NRRD: re-export it")
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * data.ndim)]
    if data.ndim not in (2, 3) or any(k not in ("domain", "space", "???", "none") for k in kinds):
        raise InputError(f"{path} is a {data.ndim}-D NRRD of sizes {tuple(data.shape)} (kinds {', '.join(kinds)}); "
                         f"certify one 3-D grayscale volume: save one component or time point as its own NRRD")
    if data.dtype.kind not in "iuf":
        raise InputError(f"{path} holds {data.dtype} voxels; give a grayscale volume of numbers")
    try:
        affine, notes = nrrd_affine(header, data.ndim)
    except InputError as e:
        raise InputError(f"{path}: {e}; fix its header")
    if data.ndim == 2:
        data = data[:, :, None]
        affine[2, 2] = affine[2, 2] or 1.0
    x, y, z = data.shape

    def read_slice(k: int) -> np.ndarray:
        return np.asarray(data[:, :, k], np.float32).T  # (rows, columns)

    flat = header.get("dimension", data.ndim) == 2

    def write_mask(out: Path, labels: np.ndarray) -> None:
        from ..io import atomic_path

        labels_xyz = np.asarray(labels, np.uint8).transpose(2, 1, 0)
        fields = {"type": "uint8", "encoding": "gzip", "kinds": ["domain"] * (2 if flat else 3)}
        for key in ("space", "space directions", "space origin", "spacings", "space units"):
            if key in header:
                fields[key] = header[key]
        with atomic_path(out) as tmp:  # the temporary name ends in .tmp: pynrrd writes an attached header
            nrrd.write(str(tmp), labels_xyz[:, :, 0] if flat else labels_xyz, fields, index_order="F")

    files = [Path(path)]
    data_file = header.get("data file")
    if isinstance(data_file, str) and " " not in data_file.strip():
        files.append(Path(path).parent / data_file)
    return Volume(path=Path(path), format="nrrd", shape=(z, y, x), affine=affine, read_slice=read_slice,
                  write_mask=write_mask, files=files, notes=notes, mask_suffixes=(".nrrd",))
