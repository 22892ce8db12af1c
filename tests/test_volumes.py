"""Volumes with their geometry (certseg_rt.volumes): NIfTI, NRRD and DICOM series written here with nibabel, pynrrd
and pydicom, read back slice by slice, masks written on the same grid; and every bad volume refused in one line."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from certseg_rt.cli import main
from certseg_rt.errors import InputError
from certseg_rt.volumes import on_grid_of, open_volume, read_mask_volume
from test_medical_io import write_dicom

nib = pytest.importorskip("nibabel")

# 4 columns (x), 3 rows (y), 5 slices (z), every voxel distinct: a transposed or flipped read cannot pass.
XYZ = np.arange(60, dtype=np.int16).reshape(4, 3, 5) * 7 - 100
OBLIQUE = np.array([[0.6, 0.1, 0.0, -12.5], [-0.1, 0.7, 0.2, 40.0], [0.0, -0.3, 2.5, -7.0], [0, 0, 0, 1.0]])


def write_nifti(path, data_xyz, affine=OBLIQUE, slope=None):
    image = nib.Nifti1Image(np.asarray(data_xyz), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)  # aligned: another code than the qform's, which the mask must keep
    if slope is not None:
        image.header.set_slope_inter(*slope)
    nib.save(image, str(path))
    return path


def labels_for(shape):
    return (np.arange(int(np.prod(shape))) % 4).reshape(shape).astype(np.uint8)


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_slices_and_mask_keep_the_header_geometry(tmp_path, name):
    volume = open_volume(write_nifti(tmp_path / name, XYZ, slope=(2.0, -10.0)))
    assert volume.format == "nifti" and volume.shape == (5, 3, 4)
    for k in range(5):  # (rows, columns) = data[:, :, k].T, the header's scaling applied
        np.testing.assert_array_equal(volume.read_slice(k), XYZ[:, :, k].T * 2.0 - 10.0)
    assert np.allclose(volume.affine, OBLIQUE)
    labels = labels_for(volume.shape)
    volume.write_mask(tmp_path / "mask.nii.gz", labels)
    mask = nib.load(str(tmp_path / "mask.nii.gz"))
    assert mask.shape == (4, 3, 5) and mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(mask.dataobj), labels.transpose(2, 1, 0))
    source = nib.load(str(tmp_path / name))  # a qform holds a rotation only: the sheared affine is the sform's
    assert np.allclose(mask.affine, OBLIQUE) and np.allclose(mask.get_qform(), source.get_qform())
    assert int(mask.header["qform_code"]) == 1 and int(mask.header["sform_code"]) == 2
    assert [f.name for f in sorted(tmp_path.iterdir())] == ["mask.nii.gz", name]  # no temporary file left


def test_nrrd_slices_and_mask_keep_space_directions_and_origin(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    directions = np.array([[0.6, -0.1, 0.0], [0.1, 0.7, -0.3], [0.0, 0.2, 2.5]])  # one row per voxel axis
    header = {"space": "left-posterior-superior", "space directions": directions,
              "space origin": np.array([12.5, -40.0, -7.0]), "kinds": ["domain"] * 3}
    nrrd.write(str(tmp_path / "v.nrrd"), XYZ, header, index_order="F")
    nrrd.write(str(tmp_path / "d.nhdr"), XYZ, header, detached_header=True, index_order="F")
    volume = open_volume(tmp_path / "v.nrrd")
    assert volume.format == "nrrd" and volume.shape == (5, 3, 4)
    np.testing.assert_array_equal(volume.read_slice(3), XYZ[:, :, 3].T)
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = directions.T, header["space origin"]
    np.testing.assert_allclose(volume.affine, np.diag([-1, -1, 1, 1]) @ lps)  # RAS+, as NIfTI states it
    labels = labels_for(volume.shape)
    volume.write_mask(tmp_path / "mask.nrrd", labels)
    data, written = nrrd.read(str(tmp_path / "mask.nrrd"), index_order="F")
    np.testing.assert_array_equal(data, labels.transpose(2, 1, 0))
    assert written["space"] == "left-posterior-superior" and data.dtype == np.uint8
    np.testing.assert_allclose(written["space directions"], directions)
    np.testing.assert_allclose(written["space origin"], header["space origin"])
    detached = open_volume(tmp_path / "d.nhdr")  # a detached header and its data file: both hashed
    np.testing.assert_array_equal(detached.read_slice(4), XYZ[:, :, 4].T)
    assert len(detached.files) == 2 and detached.sha256() != volume.sha256()


def write_series(folder, slices=4, order=(2, 0, 3, 1), override=None):
    """An oblique DICOM series (3 rows x 5 columns per slice, 2.5 mm apart along the normal), files written out
    of order; slice k holds 100 * k + its pixel index, stored as k-dependent raw values with a rescale."""
    folder.mkdir(parents=True, exist_ok=True)
    c, s = np.cos(0.5), np.sin(0.5)
    row_dir = np.array([c, s, 0.0])
    col_dir = np.array([0.0, 0.3, 1.0]) - 0.3 * s * row_dir
    col_dir /= np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    for k in [o for o in order if o < slices]:
        attrs = dict(SeriesInstanceUID="1.2.826.0.1.3680043.8.498.1", ImageOrientationPatient=[*row_dir, *col_dir],
                     ImagePositionPatient=list(np.array([10.0, -5.0, 30.0]) + 2.5 * k * normal),
                     PixelSpacing=[0.8, 0.6], RescaleSlope=2, RescaleIntercept=-1024)
        attrs.update((override or {}).get(k, {}))
        pixels = (np.arange(15).reshape(3, 5) + 100 * k + 512).astype(np.uint16)
        write_dicom(folder / f"IM{(7 * k) % 5:04d}", pixels, **attrs)
    (folder / "README.txt").write_text("not DICOM: skipped")
    return folder, row_dir, col_dir, normal


def test_dicom_series_is_sorted_along_its_normal_and_its_mask_is_nifti_on_its_grid(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    folder, row_dir, col_dir, normal = write_series(tmp_path / "series")
    volume = open_volume(folder)
    assert volume.format == "dicom-series" and volume.shape == (4, 3, 5)
    for k in range(4):
        np.testing.assert_array_equal(volume.read_slice(k), (np.arange(15).reshape(3, 5) + 100 * k + 512) * 2 - 1024)
    assert volume.notes == ["1 files of series are not DICOM images and were skipped"]
    # Voxel (column c, row r, slice k) lies at IPP_0 + c * 0.6 * row_dir + r * 0.8 * col_dir + k * 2.5 * normal (LPS).
    for c, r, k in [(0, 0, 0), (4, 2, 3), (1, 2, 2)]:
        lps = np.array([10.0, -5.0, 30.0]) + c * 0.6 * row_dir + r * 0.8 * col_dir + k * 2.5 * normal
        np.testing.assert_allclose(volume.affine @ [c, r, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-9)
    with warnings.catch_warnings():  # nibabel's DICOM wrapper, an independent reading of one slice's geometry
        warnings.simplefilter("ignore")
        from nibabel.nicom.dicomwrappers import wrapper_from_data

        first = next(f for f in sorted(folder.iterdir()) if f.name.startswith("IM")
                     and float(pydicom.dcmread(str(f)).ImagePositionPatient[0]) == 10.0)
        theirs = wrapper_from_data(pydicom.dcmread(str(first))).affine  # (row, column) -> LPS
    ours = np.diag([-1, -1, 1, 1]) @ volume.affine
    np.testing.assert_allclose(ours[:, [1, 0, 3]], theirs[:, [0, 1, 3]], atol=1e-9)
    labels = labels_for(volume.shape)
    volume.write_mask(tmp_path / "mask.nii.gz", labels)
    mask = nib.load(str(tmp_path / "mask.nii.gz"))
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-5)  # NIfTI stores float32
    np.testing.assert_array_equal(np.asarray(mask.dataobj), labels.transpose(2, 1, 0))
    again, notes = read_mask_volume(tmp_path / "mask.nii.gz", volume)  # the mask is on the series' grid
    np.testing.assert_array_equal(again, labels)


def test_a_mask_in_another_voxel_order_is_reoriented_and_another_grid_is_refused(tmp_path):
    from nibabel import orientations

    image = open_volume(write_nifti(tmp_path / "img.nii.gz", XYZ))
    labels = labels_for(image.shape)
    xyz = labels.transpose(2, 1, 0)
    swap_flip = np.array([[1, -1], [0, 1], [2, 1]])  # new axis 0 = old axis 1 flipped, new 1 = old 0
    moved = orientations.apply_orientation(xyz, swap_flip)
    write_nifti(tmp_path / "m.nii.gz", moved, OBLIQUE @ orientations.inv_ornt_aff(swap_flip, xyz.shape))
    got, notes = read_mask_volume(tmp_path / "m.nii.gz", image)
    np.testing.assert_array_equal(got, labels)
    assert notes == ["mask m.nii.gz reoriented to its image's voxel order"]
    with pytest.raises(InputError, match=r"not on its image's grid \(shape \(4, 3, 4\) against the image's "
                                         r"\(5, 3, 4\)"):
        on_grid_of(labels[:4], OBLIQUE, image, "m.nii.gz")
    shifted = OBLIQUE.copy()
    shifted[0, 3] += 5.0
    with pytest.raises(InputError, match=r"not on its image's grid \(affine \(voxel -> RAS mm\)"):
        on_grid_of(labels, shifted, image, "m.nii.gz")


def _bad_volumes(tmp_path):
    """(name, path, the one line's needle) for every kind of bad volume."""
    cases = [("4-D", write_nifti(tmp_path / "4d.nii.gz", np.zeros((4, 3, 5, 2), np.int16)), "4-D image of shape"),
             ("empty", write_nifti(tmp_path / "empty.nii.gz", np.zeros((4, 3, 0), np.int16)), "is empty"),
             ("empty folder", tmp_path / "nothing", "holds no DICOM images")]
    (tmp_path / "nothing").mkdir()
    nan = np.zeros((4, 3, 5), np.float32)
    nan[1, 2, 3] = np.nan
    cases.append(("NaN", write_nifti(tmp_path / "nan.nii.gz", nan), "slice 3 of"))
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b not a gzip stream, not NIfTI")
    cases.append(("unreadable", tmp_path / "junk.nii.gz", "cannot read"))
    whole = write_nifti(tmp_path / "whole.nii", np.zeros((64, 64, 8), np.int16)).read_bytes()
    (tmp_path / "cut.nii").write_bytes(whole[:len(whole) // 2])
    cases.append(("truncated", tmp_path / "cut.nii", "the file is truncated or corrupt"))
    (tmp_path / "junk.nrrd").write_bytes(b"NRRD0004\ntype: nonsense\n\n")
    cases.append(("bad NRRD", tmp_path / "junk.nrrd", "cannot read"))
    pytest.importorskip("pydicom")
    cases.append(("two series", write_series(tmp_path / "two", override={1: {"SeriesInstanceUID": "1.2.3.4"}})[0],
                  "mixes 2 series"))
    cases.append(("two orientations", write_series(
        tmp_path / "orient", override={3: {"ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}})[0],
        "mixes slice orientations"))
    write_series(tmp_path / "sizes")
    write_dicom(tmp_path / "sizes" / "odd", np.zeros((4, 5), np.uint16),
                SeriesInstanceUID="1.2.826.0.1.3680043.8.498.1")
    cases.append(("two sizes", tmp_path / "sizes", "mixes slice sizes (3x5, 4x5)"))
    cases.append(("same position", write_series(
        tmp_path / "repeat", override={2: {"ImagePositionPatient": [10.0, -5.0, 30.0]}})[0], "at the same position"))
    return cases


def test_bad_volumes_are_one_line_exit_1_and_nothing_written(tmp_path):
    for name, path, needle in _bad_volumes(tmp_path):
        out = tmp_path / f"out_{name.replace(' ', '_')}.nii.gz"
        r = CliRunner().invoke(main, ["certify", str(path), "--out", str(out), "--json"])
        assert r.exit_code == 1, (name, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], (name, r.output)
        assert "Traceback" not in r.output and not out.exists(), name
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_volume_out_and_window_are_checked_before_the_model_loads(tmp_path):
    path = write_nifti(tmp_path / "v.nii.gz", XYZ)
    for args, needle in [(["--out", str(tmp_path / "m.png")], "must end in .nii or .nii.gz: the mask of"),
                         (["--window", "240,-160"], "must be two finite numbers LO < HI"),
                         (["--window", "a,b"], "must be two numbers LO,HI")]:
        r = CliRunner().invoke(main, ["certify", str(path), *args])
        assert r.exit_code == 1 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_evaluate_refuses_a_mask_volume_on_another_grid_in_one_line(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    write_nifti(data / "images" / "a.nii.gz", XYZ)
    write_nifti(data / "masks" / "a.nii.gz", np.zeros((4, 3, 4), np.uint8))  # one slice short
    write_nifti(data / "images" / "b.nii.gz", XYZ)
    moved = OBLIQUE.copy()
    moved[2, 3] += 2.5  # the same shape, one slice further along
    write_nifti(data / "masks" / "b.nii.gz", np.zeros((4, 3, 5), np.uint8), moved)
    r = CliRunner().invoke(main, ["evaluate", str(data), "--out", str(tmp_path / "res"), "--n0", "2",
                                                  "--n", "4"])
    assert r.exit_code == 1
    failed = [line for line in r.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 2 and "shape (4, 3, 4) against the image's (5, 3, 4)" in failed[0]
    assert "affine (voxel -> RAS mm)" in failed[1]
    assert not (tmp_path / "res" / "records").exists()
    assert json.loads((tmp_path / "res" / "summary.json").read_text())["failed"][0]["image"] == "a"
