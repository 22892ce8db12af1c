"""fetch-data: real scans from a package registry, verified by sha256, converted with their geometry.

The liver-ct source comes from the session fixtures `liver_wheel` and `lits_dir` (conftest.py: downloaded
once into a cache, fetched once per session; skipped with the reason offline).  The conversion itself is checked on hand-made volumes whose geometry is known (NIfTI, NRRD, a DICOM series).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from certseg_rt.cli import main
from certseg_rt.data import fetch as fetch_mod
from certseg_rt.data import scans

nib = pytest.importorskip("nibabel")


def _one_line_error(r, *words):
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# --- the real source ---------------------------------------------------------------------------------------------------

def test_lits_fetched_converted_with_provenance(lits_dir, liver_wheel):
    prov = json.loads((lits_dir / "provenance.json").read_text())
    archive = prov["archive"]
    assert (archive["package"], archive["version"]) == ("liver-ct-segmentation-package", "1.6.0")
    assert archive["sha256"] == fetch_mod.sha256_of(liver_wheel)
    assert "MIT" in archive["licence"] and "LiTS" in archive["terms"]
    assert (lits_dir / "LICENSE-liver-ct-segmentation-package.txt").read_text().startswith("MIT License")
    scan = prov["scans"][0]
    assert scan["name"] == "lits117" and scan["labels"].startswith("expert")
    assert scan["shape"] == [128, 128, 128] and scan["slices_with_foreground"] == 128
    assert scan["intensity"]["level_hu"] == 50 and scan["intensity"]["width_hu"] == 400
    assert "placeholder" in scan["geometry_note"]
    images = sorted((lits_dir / "lits117" / "images").iterdir())
    masks = sorted((lits_dir / "lits117" / "masks").iterdir())
    assert [p.name for p in images] == [p.name for p in masks] and len(images) == 128
    assert not list(lits_dir.parent.glob(".liver-ct.staging-*"))


def test_lits_slices_match_the_volumes(lits_dir):
    """Slice k of the data set is volume[:, :, k].T of the NIfTI files, windowed [-150, 250] HU; tumour is liver."""
    from PIL import Image

    from certseg_rt.io import read_image

    vol = lits_dir / "volumes"
    hu = np.asanyarray(nib.load(str(vol / "lits117.nii.gz")).dataobj)
    unit = np.asanyarray(nib.load(str(vol / "lits117_unit.nii.gz")).dataobj)
    label = np.asanyarray(nib.load(str(vol / "lits117_label.nii.gz")).dataobj)
    source = np.asanyarray(nib.load(str(vol / "lits117_source_label.nii.gz")).dataobj)
    assert nib.aff2axcodes(nib.load(str(vol / "lits117.nii.gz")).affine) == ("L", "P", "S")
    np.testing.assert_allclose(unit, np.clip((hu + 150) / 400, 0, 1), atol=1e-6)
    assert set(np.unique(source)) == {0, 1, 2} and np.array_equal(label, (source > 0).astype(np.uint8))
    for k in (0, 64, 127):
        img = read_image(lits_dir / "lits117" / "images" / f"lits117_{k:03d}.png")[0]
        np.testing.assert_allclose(img, unit[:, :, k].T, atol=1 / 65535)
        mask = np.asarray(Image.open(lits_dir / "lits117" / "masks" / f"lits117_{k:03d}.png"))
        assert np.array_equal(mask, label[:, :, k].T)


def test_corrupt_file_refused_in_one_line(liver_wheel, tmp_path):
    bad = tmp_path / liver_wheel.name
    data = bytearray(liver_wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["fetch-data", "liver-ct", str(out), "--from", str(bad)])
    _one_line_error(r, "sha256", "not the recorded", "fetch again")
    assert not out.exists() and not list(tmp_path.glob(".out.staging-*"))


def test_a_member_changed_inside_a_valid_archive_is_refused(liver_wheel, tmp_path, monkeypatch):
    member = "liver_ct_segmentation_package/data/lab_117.mrc"
    members = {**fetch_mod.get_source("liver-ct")["members"], member: "0" * 64}
    with pytest.raises(fetch_mod.CertsegError, match="lab_117.mrc .* not the recorded"):
        fetch_mod.extract(liver_wheel, members, tmp_path)


# --- errors that need no download ------------------------------------------------------------------------------------

def test_bad_requests_are_one_line(tmp_path):
    runner = CliRunner()
    _one_line_error(runner.invoke(main, ["fetch-data", "lits", str(tmp_path / "a")]), "unknown source", "liver-ct")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    _one_line_error(runner.invoke(main, ["fetch-data", "liver-ct", str(tmp_path / "full")]), "not an empty folder")
    (tmp_path / "file").write_text("x")
    _one_line_error(runner.invoke(main, ["fetch-data", "liver-ct", str(tmp_path / "file" / "sub")]), "cannot write")
    _one_line_error(runner.invoke(main, ["fetch-data", "liver-ct", str(tmp_path / "b"), "--window", "50"]),
                    "LEVEL,WIDTH")
    _one_line_error(runner.invoke(main, ["fetch-data", "liver-ct", str(tmp_path / "c"), "--from",
                                         str(tmp_path / "missing.whl")]), "is not a file")


def test_no_network_is_one_line_and_writes_nothing(tmp_path):
    pytest.importorskip("mrcfile")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["fetch-data", "liver-ct", str(out), "--index-url", "http://127.0.0.1:9/simple"])
    _one_line_error(r, "cannot download", "--from FILE")
    assert list(tmp_path.iterdir()) == []


# --- conversion geometry on hand-made volumes --------------------------------------------------------------------------

def test_windowing_and_percentiles():
    hu = np.array([-1000, -150, -50, 50, 150, 250, 3000], np.float32)
    np.testing.assert_allclose(scans.window_ct(hu), [0, 0, 0.25, 0.5, 0.75, 1, 1], atol=1e-7)
    np.testing.assert_allclose(scans.window_ct(hu, (40, 80)), [0, 0, 0, 0.625, 1, 1, 1], atol=1e-7)
    mr = np.arange(1001, dtype=np.float32)  # percentiles 1 and 99 are 10 and 990
    out = scans.normalise_mr(mr)
    assert out[10] == 0 and out[990] == 1 and out[0] == 0 and out[1000] == 1
    assert out[500] == pytest.approx(0.5)


def _marked(shape=(6, 5, 4)):
    """A volume (RAS+ array order) with a voxel at the patient's right-anterior corner of slice 1, and its label."""
    vol = np.zeros(shape, np.int16)
    lab = np.zeros(shape, np.uint8)
    vol[-1, -1, 1] = 100  # i max = most right (R), j max = most anterior (A), k = 1 (inferior part)
    lab[-1, -1, 1] = 5
    return vol, lab


def _expect_marker(out, name, shape):
    """Radiological display: the patient's right-anterior voxel sits at the top-left of slice 1."""
    from PIL import Image

    from certseg_rt.io import read_image

    img = read_image(out / name / "images" / f"{name}_001.png")[0]
    mask = np.asarray(Image.open(out / name / "masks" / f"{name}_001.png"))
    rows, cols = shape[1], shape[0]
    assert img.shape == mask.shape == (rows, cols)
    assert img[0, 0] == pytest.approx((100 + 150) / 400, abs=1e-4)  # 100 HU in the [-150, 250] window
    assert mask[0, 0] == 1 and mask.sum() == 1 and np.count_nonzero(img > 0.4) == 1


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "P", "S"), ("L", "A", "I"), ("A", "R", "S")])
def test_nifti_orientation_from_the_affine(tmp_path, axcodes):
    """The same anatomy stored in four array orders (affine says which) converts to the same slices."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    vol, lab = _marked()
    affine = np.diag([2.0, 3.0, 4.0, 1.0])  # RAS+, spacing 2 x 3 x 4 mm
    t = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(axcodes))
    stored_vol, stored_lab = apply_orientation(vol, t), apply_orientation(lab, t)
    stored_aff = affine @ inv_ornt_aff(t, vol.shape)
    assert nib.aff2axcodes(stored_aff) == axcodes
    nib.save(nib.Nifti1Image(stored_vol, stored_aff), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(stored_lab, stored_aff), str(tmp_path / "lab.nii.gz"))
    scan = {"name": "m", "modality": "ct", "classes": ["background", "organ"], "label_map": {"5": 1}}
    rec = scans.convert_scan(scan, tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", tmp_path / "out")
    _expect_marker(tmp_path / "out", "m", vol.shape)
    assert rec["spacing_mm"] == [2.0, 3.0, 4.0] and rec["shape"] == list(vol.shape)
    written = nib.load(str(tmp_path / "out" / "volumes" / "m.nii.gz"))
    assert nib.aff2axcodes(written.affine) == ("L", "P", "S")
    # The written volume keeps world positions: the marker voxel maps to the same millimetres as before.
    ijk = np.argwhere(np.asanyarray(written.dataobj) == 100)[0]
    np.testing.assert_allclose(written.affine @ [*ijk, 1], affine @ [5, 4, 1, 1])


def test_nrrd_in_lps_space(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    vol, lab = _marked()
    # Stored in LPS index order: flip the RAS+ array along x and y; NRRD's space is LPS.
    header = {"space": "left-posterior-superior", "space directions": np.diag([2.0, 3.0, 4.0]),
              "space origin": np.array([0.0, 0.0, 0.0])}
    nrrd.write(str(tmp_path / "img.nrrd"), vol[::-1, ::-1].copy(), header)
    nrrd.write(str(tmp_path / "lab.nrrd"), lab[::-1, ::-1].copy(), header)
    scan = {"name": "n", "modality": "ct", "classes": ["background", "organ"], "label_map": {"5": 1}}
    scans.convert_scan(scan, tmp_path / "img.nrrd", tmp_path / "lab.nrrd", tmp_path / "out")
    _expect_marker(tmp_path / "out", "n", vol.shape)


def test_dicom_series_sorted_by_position(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    vol, _ = _marked()  # RAS+ (x, y, z); DICOM rows run along +y in LPS (posterior), columns along +x (left)
    lps = vol[::-1, ::-1]  # (x to the left, y to posterior, z)
    folder = tmp_path / "series"
    folder.mkdir()
    series = generate_uid()
    for k in [2, 0, 3, 1]:  # written out of order
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, 4.0 * k]
        ds.PixelSpacing, ds.Rows, ds.Columns = [3.0, 2.0], lps.shape[1], lps.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (lps[:, :, k].T.astype(np.int16) + 1024).tobytes()
        ds.save_as(str(folder / f"slice{k}.dcm"), enforce_file_format=True)
    hu, affine = scans.read_dicom_series(folder)
    hu, affine = scans.reorient_lps(hu, affine)
    assert np.array_equal(hu, lps.astype(np.float64))
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [2.0, 3.0, 4.0])


def test_label_geometry_mismatch_refused(tmp_path):
    vol, lab = _marked()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(lab[:, :, :3], np.eye(4)), str(tmp_path / "lab.nii.gz"))
    scan = {"name": "x", "modality": "ct", "classes": ["background", "organ"], "label_map": {"5": 1}}
    with pytest.raises(scans.InputError, match="does not match the image"):
        scans.convert_scan(scan, tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", tmp_path / "out")


def test_training_refuses_the_test_patient(lits_dir):
    pytest.importorskip("torch")
    from certseg_rt.zoo.train_ct import load_volumes

    with pytest.raises(SystemExit, match="held-out test patient"):
        load_volumes([lits_dir])
