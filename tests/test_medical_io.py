"""NIfTI and DICOM input (certseg_rt.medical_io): real files written with nibabel and pydicom."""
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from certseg_rt.errors import InputError
from certseg_rt.evaluate import list_dataset, read_mask
from certseg_rt.io import read_image
from certseg_rt.medical_io import read_dicom, read_label_volume, read_nifti, to_unit_range

# Asymmetric (3 rows x 4 columns, all values distinct): a transposed or flipped read cannot pass.
ROWS_COLS = np.arange(12, dtype=np.float32).reshape(3, 4)
AFFINE = np.diag([0.7, 0.7, 2.5, 1.0])  # 0.7 mm pixels, 2.5 mm slices


def write_nifti(path, data):
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(np.asarray(data), AFFINE), str(path))
    return path


def write_dicom(path, pixels, frames=1, pixel_data=None, transfer_syntax=None, **attributes):
    """A minimal Secondary Capture DICOM file: `pixels` is (rows, cols) or (rows, cols, 3) unsigned ints;
    `pixel_data` replaces its bytes (several frames, a compressed stream)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    colour = pixels.ndim == 3
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0  # R, G, B interleaved per pixel, as numpy's (H, W, 3)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes() if pixel_data is None else pixel_data
    for k, v in attributes.items():
        setattr(ds, k, v)
    # pydicom 3 (the extra's floor): the encoding follows the file meta's transfer syntax; enforce_file_format
    # writes the preamble and 'DICM' header (a Part 10 file), which dcmread without force requires.
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path


# --- NIfTI ---

def test_nifti_2d_is_read_as_rows_by_columns(tmp_path):
    # NIfTI stores (x, y) = (columns, rows): a file written from the transpose reads back as the image.
    path = write_nifti(tmp_path / "a.nii", ROWS_COLS.T)
    a = read_nifti(path)
    assert a.dtype == np.float32 and a.shape == (3, 4)
    np.testing.assert_array_equal(a, ROWS_COLS)


def test_nifti_single_slice_volume_and_gz(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", ROWS_COLS.T[:, :, None])  # shape (x, y, 1)
    np.testing.assert_array_equal(read_nifti(path), ROWS_COLS)


def test_nifti_volume_is_refused_as_a_2d_image_with_the_volume_route(tmp_path):
    path = write_nifti(tmp_path / "vol.nii.gz", np.zeros((4, 3, 5), np.float32))
    with pytest.raises(InputError, match=r"vol\.nii\.gz is a volume of shape \(4, 3, 5\).*certify it whole "
                                         r"\(certseg-rt certify vol\.nii\.gz.*dataobj\[:, :, k\]"):
        read_nifti(path)


# --- DICOM ---

def test_dicom_rescale_slope_and_intercept(tmp_path):
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    path = write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=2, RescaleIntercept=-1024)
    a = read_dicom(path)
    assert a.dtype == np.float32 and a.shape == (3, 4)  # pixel_array is already (rows, columns)
    np.testing.assert_array_equal(a, stored * 2.0 - 1024)


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) + 10
    path = write_dicom(tmp_path / "cr.dcm", stored, PhotometricInterpretation="MONOCHROME1")
    a = read_dicom(path)
    np.testing.assert_array_equal(a, 10 + 21 - stored)  # same range, brightest where stored was lowest
    img = read_image(path)
    assert img[0, 0, 0] == 1.0 and img[0, -1, -1] == 0.0


def test_dicom_rgb_is_height_width_3(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "photo.dcm", rgb)
    np.testing.assert_array_equal(read_dicom(path), rgb)
    assert read_image(path, channels=3).shape == (3, 4, 6)


def test_dicom_multiframe_is_refused(tmp_path):
    frames = np.zeros((2, 3, 4), np.uint16)
    path = write_dicom(tmp_path / "cine.dcm", frames[0], frames=2, pixel_data=frames.tobytes())
    with pytest.raises(InputError, match=r"cine\.dcm is a multi-frame DICOM \(2 frames\).*2-D"):
        read_dicom(path)


def test_compressed_dicom_without_a_decoder_names_the_fix(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    # Not a valid JPEG-LS stream: fails whether or not a JPEG-LS plugin is installed.
    path = write_dicom(tmp_path / "jls.dcm", np.zeros((3, 4), np.uint16), transfer_syntax=JPEGLSLossless,
                       pixel_data=encapsulate([b"\xff\xd8" + b"\0" * 20]))
    with pytest.raises(InputError, match=r"jls\.dcm.*compressed \(JPEG-LS.*pip install pylibjpeg"):
        read_dicom(path)


@pytest.mark.parametrize("name, module", [("junk.dcm", "pydicom"), ("junk.nii", "nibabel"),
                                          ("junk.nii.gz", "nibabel")])
def test_garbage_files_are_input_errors_naming_the_file(tmp_path, name, module):
    pytest.importorskip(module)
    path = tmp_path / name
    path.write_bytes(b"not a medical image " * 50)
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        read_image(path)


def test_missing_extra_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # `import nibabel` now raises ImportError
    monkeypatch.setitem(sys.modules, "pydicom", None)
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "a.dcm").write_bytes(b"x")
    with pytest.raises(InputError, match=r"pip install 'certseg-rt\[nifti\]'"):
        read_image(tmp_path / "a.nii.gz")
    with pytest.raises(InputError, match=r"pip install 'certseg-rt\[dicom\]'"):
        read_image(tmp_path / "a.dcm")


# --- normalisation, read_image, masks ---

def test_to_unit_range_is_min_max():
    np.testing.assert_allclose(to_unit_range(np.array([[-1000.0, 0.0], [500.0, 1000.0]])),
                               [[0.0, 0.5], [0.75, 1.0]])
    assert to_unit_range(np.full((2, 2), 40.0)).tolist() == [[0.0, 0.0], [0.0, 0.0]]  # constant: zeros
    with pytest.raises(InputError, match="NaN or Inf"):
        to_unit_range(np.array([0.0, np.nan]))


def test_read_image_takes_nifti_and_dicom(tmp_path):
    expected = ROWS_COLS / ROWS_COLS.max()  # min 0, so min-max is division by the maximum
    nii = write_nifti(tmp_path / "a.nii.gz", ROWS_COLS.T * 30 - 1000)  # e.g. Hounsfield units
    dcm = write_dicom(tmp_path / "a.dcm", ROWS_COLS.astype(np.uint16) * 7)
    for path in (nii, dcm):
        x = read_image(path)
        assert x.dtype == np.float32 and x.shape == (1, 3, 4) and x.min() == 0.0 and x.max() == 1.0
        np.testing.assert_allclose(x[0], expected, atol=1e-6)


def test_label_volumes_keep_their_integers(tmp_path):
    labels = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [0, 0, 3, 3]], np.uint8)
    np.testing.assert_array_equal(read_label_volume(write_nifti(tmp_path / "m.nii.gz", labels.T)), labels)
    np.testing.assert_array_equal(read_label_volume(write_dicom(tmp_path / "m.dcm", labels)), labels)
    soft = write_nifti(tmp_path / "soft.nii", labels.T * 0.5)
    with pytest.raises(InputError, match=r"soft\.nii has non-integer values"):
        read_label_volume(soft)


def _phantom_nifti_dataset(root, count=2, size=128):
    from certseg_rt.data.phantom import make_phantom

    phantoms = [make_phantom(10_000_000 + k, size=size) for k in range(count)]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, p in enumerate(phantoms):
        # .nii.gz and .nii images; masks .nii.gz.  Transposed: NIfTI arrays are (x, y) = (columns, rows).
        write_nifti(root / "images" / f"case{k}{'.nii.gz' if k % 2 == 0 else '.nii'}", p.image[0].T)
        write_nifti(root / "masks" / f"case{k}.nii.gz", p.mask.T)
    return phantoms


def test_list_dataset_names_and_masks_of_nifti_files(tmp_path):
    phantoms = _phantom_nifti_dataset(tmp_path / "data")
    samples = list_dataset(tmp_path / "data")
    assert [s.name for s in samples] == ["case0", "case1"]  # "case0.nii.gz" is case0, not case0.nii
    assert [s.image.name for s in samples] == ["case0.nii.gz", "case1.nii"]
    assert [s.mask.name for s in samples] == ["case0.nii.gz", "case1.nii.gz"]
    for s, p in zip(samples, phantoms):
        image = read_image(s.image)
        np.testing.assert_array_equal(read_mask(s.mask, 4, image.shape[1:]), p.mask)  # same orientation
        np.testing.assert_allclose(image[0], to_unit_range(p.image[0]), atol=1e-6)


def test_evaluate_a_nifti_dataset_end_to_end(tmp_path):
    pytest.importorskip("torch")
    from certseg_rt.cli import main

    _phantom_nifti_dataset(tmp_path / "data")
    out = tmp_path / "results"
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "data"), "--out", str(out),
                                  "--n0", "2", "--n", "8", "--tau", "0.6", "--alpha", "0.5"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == [] and summary["overall"][0]["images"] == 2
    assert sorted(p.stem for p in (out / "records").rglob("*.json")) == ["case0", "case1"]
