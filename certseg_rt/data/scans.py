"""Real scans -> the project's data set layout: volumes read with their geometry, reoriented, windowed, sliced.

Used by ``certseg-rt fetch-data`` (fetch.py) on the files of a source (scan_sources.json).  Reading here is
for conversion only (the certify path reads volumes in medical_io); each reader returns the voxels and a
4x4 affine in nibabel's convention (voxel index -> RAS+ millimetres).

Every volume is reoriented to the array order (L, P, S): the first index runs to the patient's left, the
second to posterior, the third to superior, which is how ITK and most DICOM converters store axial CT.
An axial slice is then ``volume[:, :, k].T``: rows run anterior -> posterior and columns patient-right ->
patient-left, the radiological display (patient's right on the viewer's left), and it is the array that
certseg-rt reads from that NIfTI slice (medical_io transposes NIfTI's (x, y) to (rows, columns)).

Intensities go to the models' [0, 1]: CT by a fixed window in Hounsfield units (``CT_WINDOW``, the
abdominal soft-tissue window, level 50 and width 400: [-150, 250] HU), MR by the 1st and 99th
percentiles of the whole volume (one mapping for all its slices).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

CT_WINDOW = (50.0, 400.0)  # (level, width) in Hounsfield units: abdominal soft tissue, [-150, 250] HU
MR_PERCENTILES = (1.0, 99.0)
LPS = ("L", "P", "S")
_RAS_UNIT = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def window_ct(hu: np.ndarray, window=CT_WINDOW) -> np.ndarray:
    """Hounsfield units -> [0, 1]: level - width/2 maps to 0, level + width/2 to 1, clipped outside."""
    level, width = window
    return np.clip((np.asarray(hu, np.float64) - (level - width / 2)) / width, 0.0, 1.0).astype(np.float32)


def normalise_mr(volume: np.ndarray, percentiles=MR_PERCENTILES) -> np.ndarray:
    """MR (arbitrary units) -> [0, 1] by the volume's own percentiles (robust to a few bright voxels)."""
    lo, hi = np.percentile(np.asarray(volume, np.float64), percentiles)
    if hi <= lo:
        return np.zeros(volume.shape, np.float32)
    return np.clip((volume - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def to_unit_range(volume: np.ndarray, modality: str, window=CT_WINDOW) -> np.ndarray:
    return window_ct(volume, window) if modality == "ct" else normalise_mr(volume)


# --- readers: (voxels, affine) ------------------------------------------------------------------------------------

def _lps_to_ras(affine: np.ndarray) -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def read_nifti_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    if len(img.shape) != 3:
        raise InputError(f"{path.name} has shape {img.shape}; expected a 3-D volume")
    return np.asanyarray(img.dataobj), np.asarray(img.affine, np.float64)


def read_nrrd_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """NRRD: 'space directions' (one column per axis) and 'space origin' in the header's space (LPS or RAS)."""
    import nrrd

    data, header = nrrd.read(str(path))
    if data.ndim != 3:
        raise InputError(f"{path.name} has shape {data.shape}; expected a 3-D volume")
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(header["space directions"], np.float64).T
    affine[:3, 3] = np.asarray(header["space origin"], np.float64)
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space in ("left-posterior-superior", "lps"):
        affine = _lps_to_ras(affine)
    elif space not in ("right-anterior-superior", "ras"):
        raise InputError(f"{path.name} is in NRRD space {space!r}; expected LPS or RAS")
    return data, affine


def read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A folder of single-frame slices of one series -> (x, y, z) voxels in modality units and their affine.

    The slices are sorted along the normal of ImageOrientationPatient; the affine comes from the first
    slice's ImagePositionPatient, PixelSpacing and the distance between slice positions (DICOM patient
    space is LPS).  pixel_array is (rows, columns), i.e. (y, x): transposed to (x, y) here."""
    import pydicom

    slices = [pydicom.dcmread(str(p)) for p in sorted(folder.iterdir()) if p.is_file()]
    if not slices:
        raise InputError(f"{folder.name} holds no DICOM files")
    if len({s.SeriesInstanceUID for s in slices}) != 1:
        raise InputError(f"{folder.name} mixes {len({s.SeriesInstanceUID for s in slices})} DICOM series")
    row, col = (np.asarray(v, np.float64) for v in np.split(np.asarray(slices[0].ImageOrientationPatient, float), 2))
    normal = np.cross(row, col)
    slices.sort(key=lambda s: float(np.dot(normal, np.asarray(s.ImagePositionPatient, float))))
    positions = np.array([np.dot(normal, np.asarray(s.ImagePositionPatient, float)) for s in slices])
    steps = np.diff(positions)
    if len(steps) and (steps.min() <= 0 or steps.max() - steps.min() > 1e-3 * max(1.0, abs(steps.mean()))):
        raise InputError(f"{folder.name}: slices are not evenly spaced (steps {steps.min():g}..{steps.max():g} mm)")
    dz = float(steps.mean()) if len(steps) else float(slices[0].get("SliceThickness") or 1.0)
    dy, dx = (float(v) for v in slices[0].PixelSpacing)  # row spacing, column spacing
    voxels = np.stack([s.pixel_array.astype(np.float64) * float(s.get("RescaleSlope", 1) or 1)
                       + float(s.get("RescaleIntercept", 0) or 0) for s in slices], axis=-1)  # (rows, cols, z)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = row * dx, col * dy, normal * dz
    affine[:3, 3] = np.asarray(slices[0].ImagePositionPatient, np.float64)
    return np.transpose(voxels, (1, 0, 2)), _lps_to_ras(affine)


def read_mrc_volume(path: Path, axes: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
    """MRC (electron microscopy's format, used by liver-ct-segmentation-package) has no patient orientation
    and here no voxel size (0): `axes` says where each array axis points (from the source's record), and
    the spacing is set to 1 mm as a placeholder, which provenance.json says."""
    import mrcfile

    with mrcfile.open(str(path), permissive=True) as mrc:
        data = np.array(mrc.data)
    if data.ndim != 3:
        raise InputError(f"{path.name} has shape {data.shape}; expected a 3-D volume")
    # The affine of an array whose axes point along `axes`: unit spacing, origin at voxel 0.
    affine = np.eye(4)
    for i, code in enumerate(axes):
        affine[:3, i] = _RAS_UNIT[code]
    return data, affine


_MET_TYPES = {"MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4",
              "MET_INT": "i4", "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


def read_metaimage(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """MetaImage (ITK's .mhd header + raw or zlib data file, or one .mha file): 'Offset', 'ElementSpacing'
    and 'TransformMatrix' place the voxels in ITK's LPS world.  Only axis-aligned directions are taken (a
    rotated one would need MetaIO's row/column convention, which no recorded source has)."""
    import zlib

    raw = path.read_bytes()
    header, end = {}, 0
    for line in raw.split(b"\n", 200):  # the header's lines (an .mha's voxels follow its ElementDataFile line)
        end += len(line) + 1
        key, _, value = line.decode("latin-1").partition("=")
        header[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        step = np.asarray([float(v) for v in header.get("ElementSpacing", "1 1 1").split()], np.float64)
        offset = np.asarray([float(v) for v in header.get("Offset", "0 0 0").split()], np.float64)
        direction = np.asarray([float(v) for v in header.get("TransformMatrix", "1 0 0 0 1 0 0 0 1").split()])
        dtype = np.dtype(_MET_TYPES[header["ElementType"]]).newbyteorder(
            ">" if header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB")) == "True" else "<")
        data_file = header["ElementDataFile"]
    except (KeyError, ValueError) as e:
        raise InputError(f"{path.name}: not a MetaImage header this reader takes ({e})")
    direction = direction.reshape(3, 3) if direction.size == 9 else None
    if len(dims) != 3 or direction is None or not np.array_equal(np.abs(direction), np.eye(3)):
        raise InputError(f"{path.name}: a 3-D MetaImage with an axis-aligned TransformMatrix is expected")
    try:
        data = raw[end:] if data_file == "LOCAL" else (path.parent / data_file).read_bytes()
        if header.get("CompressedData") == "True":
            data = zlib.decompress(data)
        voxels = np.frombuffer(data, dtype, count=int(np.prod(dims))).reshape(dims[::-1]).transpose(2, 1, 0)
    except (OSError, zlib.error, ValueError) as e:
        raise InputError(f"{path.name}: its voxel data cannot be read ({e})")
    affine = np.eye(4)
    affine[:3, :3] = direction * step  # column i: where index i steps, in mm
    affine[:3, 3] = offset
    return voxels, _lps_to_ras(affine)


def read_volume(path: Path, axes=None) -> tuple[np.ndarray, np.ndarray]:
    name = path.name.lower()
    if path.is_dir():
        return read_dicom_series(path)
    if name.endswith((".mhd", ".mha")):
        return read_metaimage(path)
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti_volume(path)
    if name.endswith(".nrrd"):
        return read_nrrd_volume(path)
    if name.endswith(".mrc"):
        return read_mrc_volume(path, axes)
    raise InputError(f"{path.name}: no reader for this kind of file (NIfTI, NRRD, MetaImage, MRC or a DICOM folder)")


def reorient_lps(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The volume in (L, P, S) array order and the affine of the reoriented array (same world positions)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    transform = ornt_transform(io_orientation(affine), axcodes2ornt(LPS))
    out = apply_orientation(np.asarray(volume), transform)
    return np.ascontiguousarray(out), affine @ inv_ornt_aff(transform, volume.shape)


def map_labels(labels: np.ndarray, label_map: dict) -> np.ndarray:
    """Source label values -> class indices (uint8); values not in the map become background (0)."""
    lut = np.zeros(int(max(int(labels.max(initial=0)), *(int(k) for k in label_map))) + 1, np.uint8)
    for src, dst in label_map.items():
        lut[int(src)] = int(dst)
    if labels.min(initial=0) < 0:
        raise InputError("label volume has negative values")
    return lut[np.asarray(labels).astype(np.int64)]


def axial_slices(volume_lps: np.ndarray) -> list[np.ndarray]:
    """(L, P, S) volume -> its axial slices as (rows, columns) arrays in radiological display."""
    return [np.ascontiguousarray(volume_lps[:, :, k].T) for k in range(volume_lps.shape[2])]


def spacing(affine: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in np.linalg.norm(affine[:3, :3], axis=0)]


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(volume, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def convert_scan(scan: dict, image_path: Path, label_path: Path | None, out: Path, window=CT_WINDOW,
                 label_meshes: dict[int, Path] | None = None) -> dict:
    """One scan -> out/<name>/{images,masks}/<name>_<k>.png and out/volumes/<name>*.nii.gz; its geometry record.

    Labels come from a label volume (label_path) or from closed meshes, {source label value: OBJ file} in
    millimetres of the image's own voxel frame (meshes.py).  Images are 16-bit PNGs of the [0, 1]
    intensities (read back as value / 65535); masks 8-bit class indices.  A scan without labels writes its
    slices to out/<name>/unlabelled/ (not a data set evaluate can score)."""
    from ..io import write_png

    name, modality = scan["name"], scan["modality"]
    volume, affine = read_volume(image_path, scan.get("axes"))
    labels = mesh_record = None
    if label_meshes:  # voxelised on the image's own grid, then reoriented with it
        from .meshes import label_volume

        raw, mesh_record = label_volume(label_meshes, volume.shape, spacing(affine))
        raw, _ = reorient_lps(raw, affine)
        labels = map_labels(raw, scan["label_map"])
    volume, affine = reorient_lps(volume.astype(np.float32), affine)
    if labels is None and label_path is not None:
        raw, label_affine = read_volume(label_path, scan.get("axes"))
        raw, label_affine = reorient_lps(raw, label_affine)
        if raw.shape != volume.shape or not np.allclose(label_affine, affine, atol=1e-3):
            raise InputError(f"{name}: the label volume's geometry ({raw.shape}, spacing {spacing(label_affine)}) "
                             f"does not match the image's ({volume.shape}, spacing {spacing(affine)})")
        labels = map_labels(raw, scan["label_map"])
    unit = to_unit_range(volume, modality, window)
    vol_dir = out / "volumes"
    vol_dir.mkdir(parents=True, exist_ok=True)
    write_nifti(vol_dir / f"{name}.nii.gz", volume, affine)  # modality units (HU for CT)
    write_nifti(vol_dir / f"{name}_unit.nii.gz", unit, affine)  # the models' [0, 1] input, as the slices
    if labels is not None:
        write_nifti(vol_dir / f"{name}_label.nii.gz", labels, affine)
        write_nifti(vol_dir / f"{name}_source_label.nii.gz", np.asarray(raw), affine)
    image_dir = out / name / ("images" if labels is not None else "unlabelled")
    for k, img in enumerate(axial_slices(unit)):
        write_png(image_dir / f"{name}_{k:03d}.png", np.round(img * 65535).astype(np.uint16))
    if labels is not None:
        for k, mask in enumerate(axial_slices(labels)):
            write_png(out / name / "masks" / f"{name}_{k:03d}.png", mask)
    counts = {} if labels is None else {c: int(np.count_nonzero(labels == i)) for i, c in enumerate(scan["classes"])}
    return {"name": name, "modality": modality, "shape": list(volume.shape), "spacing_mm": spacing(affine),
            "affine": np.round(affine, 6).tolist(), "slices": int(volume.shape[2]),
            "slices_with_foreground": None if labels is None else int((labels > 0).any(axis=(0, 1)).sum()),
            "voxels_per_class": counts, "intensity": _intensity_record(modality, window),
            "range_in_source_units": [float(volume.min()), float(volume.max())],
            **({"voxelised_meshes": mesh_record} if mesh_record else {})}


def _intensity_record(modality: str, window) -> dict:
    if modality == "ct":
        level, width = window
        return {"kind": "CT window", "level_hu": level, "width_hu": width,
                "maps": f"[{level - width / 2:g}, {level + width / 2:g}] HU -> [0, 1], clipped"}
    return {"kind": "MR percentiles", "percentiles": list(MR_PERCENTILES),
            "maps": "the volume's 1st..99th percentile -> [0, 1], clipped"}
