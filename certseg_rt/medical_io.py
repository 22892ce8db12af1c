"""NIfTI (.nii, .nii.gz) and DICOM (.dcm) 2-D images and label masks, for `certify` and `evaluate`.

Here a file holds one slice: a 2-D NIfTI image or a volume with a single slice, a single-frame DICOM.
Volumes (NIfTI of several slices, NRRD, DICOM series) are read with their geometry by
``certseg_rt.volumes``, which takes its file helpers from here.  nibabel and pydicom are optional (the
extras ``nifti`` and ``dicom``) and imported only when such a file is read.

Images come back in modality units (e.g. Hounsfield units for CT); `to_unit_range` maps them to the
[0, 1] the models take.  Masks (`read_label_volume`) are integer class indices and are never rescaled.
"""
from __future__ import annotations

import importlib
import struct
from pathlib import Path

import numpy as np

from .errors import InputError
from .limits import check_image_size

# Lower case; no suffix here ends another one, so `name.lower().endswith(...)` is unambiguous.
MEDICAL_SUFFIXES = (".nii", ".nii.gz", ".dcm")


def is_medical(path) -> bool:
    # Path(".../a.nii.gz").suffix is ".gz": look at the whole name.
    return Path(path).name.lower().endswith(MEDICAL_SUFFIXES)


def require(module: str, extra: str, path: Path):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"reading {path} needs {module}, which is not installed: pip install 'certseg-rt[{extra}]'")


def one_line(e: Exception) -> str:
    return " ".join(str(e).split())  # nibabel's and pydicom's messages may span lines; errors are printed as one


def read_nifti(path) -> np.ndarray:
    """A NIfTI file holding one 2-D slice -> float32 (H, W) = (rows, columns), in the file's units.

    Takes a 2-D image, or a volume whose third (and any further) axis has length 1.  Intensity scaling
    in the header (scl_slope, scl_inter) is applied.
    """
    path = Path(path)
    nib = require("nibabel", "nifti", path)
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as e:
        raise InputError(f"cannot read {path} as NIfTI ({one_line(e)}); the file is truncated or not NIfTI: give "
                         f"a .nii or .nii.gz file, or a PNG/.npy")
    shape = tuple(int(d) for d in img.shape)
    if len(shape) < 2 or min(shape) == 0:
        raise InputError(f"{path} has shape {shape}; expected a 2-D image (a NIfTI of shape (X, Y) or (X, Y, 1))")
    if any(d != 1 for d in shape[2:]):
        index = ", ".join([":", ":", "k"] + ["0"] * (len(shape) - 3))
        raise InputError(f"{path} is a volume of shape {shape}, and this reads 2-D images: certify it whole "
                         f"(certseg-rt certify {path.name}; certseg_rt.volumes.open_volume) or save one slice k, "
                         f"e.g. with nibabel: img = nibabel.load(path); nibabel.save(nibabel.Nifti1Image("
                         f"img.dataobj[{index}], img.affine), 'slice_k.nii.gz')")
    # Checked on the header, before the voxels are decoded.  NIfTI's first axis is x (columns).
    check_image_size(shape[1], shape[0], what=f"image {path}")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape[:2])
    except (OSError, EOFError, ValueError, TypeError) as e:  # a truncated or corrupt .nii.gz, an odd dtype
        raise InputError(f"cannot read the voxels of {path} ({one_line(e)}); the file is truncated or corrupt: "
                         f"re-export it")
    # NIfTI indexes voxels as data[x, y]: the first axis runs along the columns of a displayed slice,
    # the second along its rows.  certseg-rt's arrays are (rows, columns), as in PNG, numpy images and
    # ITK/SimpleITK's GetArrayFromImage, hence the transpose.  The affine is not applied (no flips to a
    # canonical orientation): a slice is certified as stored, and a NIfTI mask read the same way lines up.
    return np.ascontiguousarray(data.T)


# What pydicom raises on a damaged file: parsing and decoding fail in many ways.
_PARSE_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError, struct.error)


def _read_dicom_pixels(path: Path, what: str):
    """(dataset, pixel array as stored) of a single-frame DICOM file; InputError for anything unusable."""
    pydicom = require("pydicom", "dicom", path)
    try:
        ds = pydicom.dcmread(str(path))
    except pydicom.errors.InvalidDicomError:  # its message suggests force=True, which certseg-rt does not offer
        raise InputError(f"{path} is not a DICOM file (no 'DICM' header); give a DICOM Part 10 file or convert "
                         f"the {what} to PNG/.npy")
    except _PARSE_ERRORS as e:
        raise InputError(f"cannot read {path} as DICOM ({one_line(e)}); the file is truncated or damaged: "
                         f"re-export it, or convert the {what} to PNG/.npy")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise InputError(f"{path} is a multi-frame DICOM ({frames} frames); certseg-rt certifies 2-D images: "
                         f"save one frame, e.g. with pydicom: numpy.save('frame.npy', pydicom.dcmread(path)"
                         f".pixel_array[k])")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(f"{path} has no pixel data (a report or structure set, or a truncated file); give a "
                         f"DICOM image")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    check_image_size(rows, cols, what=f"{what} {path}")  # before the pixels are decoded
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError, *_PARSE_ERRORS) as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed:
            raise InputError(f"cannot decode {path}: its pixels are compressed ({syntax.name}) and pydicom could "
                             f"not decode them ({one_line(e)}); install the decoders (pip install pylibjpeg "
                             f"pylibjpeg-libjpeg pylibjpeg-openjpeg) or decompress the file (gdcmconv --raw)")
        raise InputError(f"cannot decode the pixels of {path} ({one_line(e)}); the file is damaged or its image "
                         f"attributes are inconsistent: re-export it")
    return ds, pixels


def read_dicom(path) -> np.ndarray:
    """A single-frame DICOM image -> float32 (H, W), or (H, W, 3) for colour, in modality units.

    RescaleSlope and RescaleIntercept are applied (stored values -> e.g. Hounsfield units) and a
    MONOCHROME1 image (low values displayed white) is inverted within its own range, so that bright
    means high everywhere, as in MONOCHROME2.  pixel_array is already (Rows, Columns): no transpose.
    """
    path = Path(path)
    ds, pixels = _read_dicom_pixels(path, "image")
    a = np.asarray(pixels, np.float64)
    if int(ds.get("SamplesPerPixel") or 1) == 1:  # the rescale is defined for grayscale pixels only
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")  # None or "" when empty
        a = a * (1.0 if slope in (None, "") else float(slope)) + (0.0 if intercept in (None, "") else float(intercept))
        if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1" and a.size:
            a = a.max() + a.min() - a
    return a.astype(np.float32)


def to_unit_range(a, what: str = "image") -> np.ndarray:
    """The intensity normalisation of NIfTI and DICOM images: min-max of the image to [0, 1], float32.

    Medical intensities are not in [0, 1] (CT in Hounsfield units, MR in arbitrary units), so each image
    is windowed to its own full range: its minimum maps to 0 and its maximum to 1; a constant image
    becomes zeros.  The window therefore depends on the image (a bright implant changes it).  With a
    fixed window in mind -- e.g. a CT soft-tissue window of Hounsfield units [-160, 240] -- apply it
    yourself (clip, then scale to [0, 1]) and save the image as PNG or .npy, which are read as given.
    """
    a = np.asarray(a)
    if not np.isfinite(a).all():
        raise InputError(f"{what} contains NaN or Inf values; clean the image before certifying")
    a = a.astype(np.float64)  # float64: (a - lo) of a wide float32 range could overflow
    if a.size == 0:
        return a.astype(np.float32)
    lo, hi = a.min(), a.max()
    if hi == lo:
        return np.zeros(a.shape, np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def read_medical_image(path) -> np.ndarray:
    """NIfTI or DICOM image -> float32 (H, W) or (H, W, 3) in [0, 1] (see `to_unit_range`)."""
    path = Path(path)
    a = read_dicom(path) if path.name.lower().endswith(".dcm") else read_nifti(path)
    return to_unit_range(a, what=f"image {path}")


def read_label_volume(path) -> np.ndarray:
    """A NIfTI or DICOM mask -> int64 (H, W) class indices, as stored: no rescale, no normalisation.

    Same orientation as the images (`read_nifti`, `read_dicom`), so an image and its mask line up.
    """
    path = Path(path)
    if path.name.lower().endswith(".dcm"):
        _, a = _read_dicom_pixels(path, "mask")
    else:
        a = read_nifti(path)
    a = np.asarray(a)
    if not np.isfinite(a).all() or not np.array_equal(a, np.round(a)):
        raise InputError(f"mask {path} has non-integer values; masks hold one class index per pixel: save "
                         f"integer labels (e.g. uint8)")
    if a.size and a.min() < 0:
        raise InputError(f"mask {path} has negative label {int(a.min())}; class indices start at 0 (background)")
    return a.astype(np.int64)
