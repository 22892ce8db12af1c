"""fetch-data's Debian source (amos-ct): a .deb read without dpkg, a MetaImage CT, organ labels voxelised from
closed meshes.

Hand-made cases give exact answers (a box and an octahedron whose inside is known voxel by voxel, a MetaImage
whose voxel order and geometry are known, a .deb built here); the real package comes from the session fixture
`amos_dir` (conftest.py: downloaded once into the cache, skipped with the reason offline).
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import tarfile
import zlib

import numpy as np
import pytest

from certseg_rt.data import fetch as fetch_mod
from certseg_rt.data import meshes, scans

nib = pytest.importorskip("nibabel")


# --- meshes -> voxels ---------------------------------------------------------------------------------------------------

def _write_obj(path, vertices, faces, quads=False):
    lines = [f"v {x} {y} {z}" for x, y, z in vertices]
    lines += [f"f {' '.join(str(i + 1) for i in f)}" for f in faces]
    path.write_text("# hand-made\n" + "\n".join(lines) + "\n")
    return path


def _box(lo, hi):
    """A closed box: 8 corners, 6 quads."""
    corners = [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return corners, quads


def test_box_fills_exactly_the_voxels_whose_centres_are_inside(tmp_path):
    spacing = (2.0, 1.5, 4.0)
    lo, hi = (3.0, 3.9, 2.2), (11.0, 10.1, 13.0)  # mm; centres at i * spacing
    corners, quads = _box(lo, hi)
    v, f = meshes.read_obj(_write_obj(tmp_path / "box.obj", corners, quads))
    assert len(f) == 12  # quads fanned into triangles
    inside, odd = meshes.voxelize(v, f, (8, 9, 5), spacing)
    centres = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip((8, 9, 5), spacing)), indexing="ij"), -1)
    expect = np.all((centres > lo) & (centres < hi), axis=-1)
    assert odd == 0 and expect.sum() == 4 * 4 * 3
    assert np.array_equal(inside, expect)


def test_octahedron_matches_its_inequality(tmp_path):
    """|x - c| + |y - c| + |z - c| < r, with no voxel centre on the surface: every voxel decided exactly."""
    c, r = np.array([7.3, 6.6, 7.1]), 5.45
    vertices = [tuple(c + r * s * e) for e in np.eye(3) for s in (1, -1)]  # +x, -x, +y, -y, +z, -z
    faces = [(a, b, z) for a, b, z in itertools.product((0, 1), (2, 3), (4, 5))]
    v, f = meshes.read_obj(_write_obj(tmp_path / "oct.obj", vertices, faces))
    inside, odd = meshes.voxelize(v, f, (16, 15, 16), (1.0, 1.0, 1.0))
    centres = np.stack(np.meshgrid(np.arange(16), np.arange(15), np.arange(16), indexing="ij"), -1)
    expect = np.abs(centres - c).sum(-1) < r
    assert odd == 0 and expect.sum() > 200 and np.array_equal(inside, expect)


def test_an_open_mesh_leaves_its_columns_empty_and_counts_them(tmp_path):
    corners, quads = _box((1.2, 1.2, 1.2), (5.8, 5.8, 5.8))
    v, f = meshes.read_obj(_write_obj(tmp_path / "open.obj", corners, quads[:4] + quads[5:]))  # no bottom (z = lo)
    inside, odd = meshes.voxelize(v, f, (8, 8, 8), (1.0, 1.0, 1.0))
    assert odd == 16 and not inside.any()  # the 4 x 4 columns through it cross the surface once


def test_label_volume_lower_value_keeps_overlaps_and_bad_obj_is_one_error(tmp_path):
    a = _write_obj(tmp_path / "a.obj", *_box((0.5, 0.5, 0.5), (3.5, 3.5, 3.5)))
    b = _write_obj(tmp_path / "b.obj", *_box((2.5, 2.5, 2.5), (5.5, 5.5, 5.5)))
    labels, record = meshes.label_volume({7: b, 2: a}, (6, 6, 6), (1.0, 1.0, 1.0))
    assert labels[3, 3, 3] == 2 and labels[5, 5, 5] == 7 and labels[0, 0, 0] == 0
    assert record == {"2": {"voxels": 27, "odd_columns": 0}, "7": {"voxels": 27, "odd_columns": 0}}
    (tmp_path / "bad.obj").write_text("v 0 0 0\nf 1 2 3\n")
    with pytest.raises(scans.InputError, match="bad.obj: no triangles, or faces name vertices"):
        meshes.read_obj(tmp_path / "bad.obj")


# --- MetaImage ---------------------------------------------------------------------------------------------------------

def _write_mhd(folder, voxels_xyz, compressed=True, matrix="1 0 0 0 1 0 0 0 1", offset="-10 20 30", local=False):
    """A .mhd header with a separate data file, or (local) one .mha file with the voxels after its header."""
    payload = np.ascontiguousarray(voxels_xyz.transpose(2, 1, 0)).astype("<i2").tobytes()  # x runs fastest
    data = zlib.compress(payload) if compressed else payload
    nx, ny, nz = voxels_xyz.shape
    header = (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"CompressedData = {compressed}\nTransformMatrix = {matrix}\nOffset = {offset}\n"
              f"ElementSpacing = 0.5 0.75 3\nDimSize = {nx} {ny} {nz}\nAnatomicalOrientation = RAI\n"
              f"ElementType = MET_SHORT\nElementDataFile = {'LOCAL' if local else 'ct.zraw'}\n")
    if local:
        (folder / "ct.mha").write_bytes(header.encode() + data)
        return folder / "ct.mha"
    (folder / "ct.zraw").write_bytes(data)
    (folder / "ct.mhd").write_text(header)
    return folder / "ct.mhd"


@pytest.mark.parametrize("compressed,local", [(True, False), (False, False), (True, True), (False, True)])
def test_metaimage_voxel_order_and_lps_geometry(tmp_path, compressed, local):
    voxels = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2) * 7 - 50
    data, affine = scans.read_metaimage(_write_mhd(tmp_path, voxels, compressed, local=local))
    assert np.array_equal(data, voxels)
    # ITK's world is LPS: index (1, 2, 1) lies at offset + index * spacing in LPS, (-x, -y, z) in RAS.
    np.testing.assert_allclose(affine @ [1, 2, 1, 1], [10 - 0.5, -20 - 1.5, 30 + 3, 1])
    assert nib.aff2axcodes(affine) == ("L", "P", "S")


def test_metaimage_rotated_direction_or_damaged_data_refused(tmp_path):
    path = _write_mhd(tmp_path, np.zeros((2, 2, 2), np.int16), matrix="0 1 0 1 0 0 0 0 1")
    with pytest.raises(scans.InputError, match="axis-aligned TransformMatrix"):
        scans.read_volume(path)
    path = _write_mhd(tmp_path, np.zeros((4, 4, 4), np.int16))
    (tmp_path / "ct.zraw").write_bytes((tmp_path / "ct.zraw").read_bytes()[:-5])  # truncated zlib stream
    with pytest.raises(scans.InputError, match="ct.mhd: its voxel data cannot be read"):
        scans.read_volume(path)
    _write_mhd(tmp_path, np.zeros((4, 4, 4), np.int16), compressed=False)
    (tmp_path / "ct.zraw").write_bytes(b"\0" * 10)  # fewer voxels than DimSize says
    with pytest.raises(scans.InputError, match="voxel data cannot be read"):
        scans.read_volume(path)


# --- a Debian package, read without dpkg ------------------------------------------------------------------------------

def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_deb_members_extracted_and_checked(tmp_path):
    files = {"usr/share/x/odd.txt": b"abc", "usr/share/x/b.bin": bytes(range(256)) * 3}
    deb = tmp_path / "x_1.0_all.deb"
    deb.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.xz": _tar_xz({"control": b"Package: x\n"}),
                         "data.tar.xz": _tar_xz(files)}))
    wanted = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    fetch_mod.extract(deb, wanted, tmp_path / "out")
    assert all((tmp_path / "out" / n).read_bytes() == d for n, d in files.items())
    with pytest.raises(fetch_mod.CertsegError, match="odd.txt in x_1.0_all.deb has sha256 .* not the recorded"):
        fetch_mod.extract(deb, {**wanted, "usr/share/x/odd.txt": "0" * 64}, tmp_path / "again")
    with pytest.raises(fetch_mod.CertsegError, match="lacks 1 recorded file"):
        fetch_mod.extract(deb, {**wanted, "usr/share/x/missing": "0" * 64}, tmp_path / "third")


def test_debian_mirror_read_from_apt_sources(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    assert fetch_mod.default_debian_mirror(etc) == fetch_mod.DEBIAN_MIRROR  # nothing configured
    (etc / "sources.list.d" / "other.list").write_text("deb [arch=amd64] https://example.org/node nodistro main\n")
    (etc / "sources.list.d" / "zz.sources").write_text(
        "Types: deb\nURIs: http://mirror.local/debian/\nSuites: trixie\nComponents: main\n")
    assert fetch_mod.default_debian_mirror(etc) == "http://mirror.local/debian"
    (etc / "sources.list").write_text("# old style\ndeb http://ftp.example.net/debian bookworm main\n")
    assert fetch_mod.default_debian_mirror(etc) == "http://ftp.example.net/debian"  # sources.list is read first


def test_debian_download_failure_is_one_line_and_writes_nothing(tmp_path):
    archive = fetch_mod.get_source("amos-ct")["archive"]
    with pytest.raises(fetch_mod.CertsegError,
                       match=r"cannot download libcamitk5-data=5\.2\.0-5 .*snapshot\.debian\.org.* --from FILE"):
        fetch_mod.obtain(archive, tmp_path / "dl", index="http://127.0.0.1:9/debian")
    assert list(tmp_path.iterdir()) == []


# --- the real package ----------------------------------------------------------------------------------------------------

def test_amos_fetched_with_organs_where_they_belong(amos_dir, amos_deb):
    prov = json.loads((amos_dir / "provenance.json").read_text())
    archive = prov["archive"]
    assert (archive["registry"], archive["package"], archive["version"]) == ("debian", "libcamitk5-data", "5.2.0-5")
    assert archive["sha256"] == fetch_mod.sha256_of(amos_deb) and "AMOS" in archive["terms"]
    assert "LGPL-3+" in (amos_dir / "LICENSE-libcamitk5-data.txt").read_text()
    scan = prov["scans"][0]
    assert scan["shape"] == [256, 256, 157] and scan["spacing_mm"] == [1.58594, 1.58594, 4.0]
    used = {v: scan["voxelised_meshes"][v] for v in ("1", "2", "3", "6")}  # spleen, kidneys, liver: closed meshes
    assert all(m["odd_columns"] == 0 for m in used.values()), used
    vol = amos_dir / "volumes"
    hu = np.asanyarray(nib.load(str(vol / "amos0336.nii.gz")).dataobj)
    label = np.asanyarray(nib.load(str(vol / "amos0336_label.nii.gz")).dataobj)
    source = np.asanyarray(nib.load(str(vol / "amos0336_source_label.nii.gz")).dataobj)
    assert nib.aff2axcodes(nib.load(str(vol / "amos0336.nii.gz")).affine) == ("L", "P", "S")
    litres = {c: (label == i).sum() * 1.58594 ** 2 * 4 / 1e6 for i, c in enumerate(scan["classes"])}
    assert 1.1 < litres["liver"] < 1.5 and 0.05 < litres["spleen"] < 0.2 and 0.1 < litres["kidney"] < 0.3
    # The labels sit on their organs: contrast-enhanced liver, kidneys brighter still, aorta brightest.
    median = {n: float(np.median(hu[source == n])) for n in (6, 2, 8)}
    assert 40 < median[6] < 120 and median[2] > median[6] + 40 and median[8] > 150, median
    # Patient's right is low x in (L, P, S) order: liver and right kidney (label 2) right of the aorta, spleen
    # and left kidney left of it.
    x = {n: np.argwhere(source == n)[:, 0].mean() for n in (6, 1, 2, 3, 8)}
    assert max(x[6], x[2]) < x[8] < min(x[1], x[3]), x
    assert len(list((amos_dir / "amos0336" / "masks").iterdir())) == 157


def test_training_tables_name_amos_organs_by_its_own_numbers():
    """train_ct's vessel and bowel tables for amos-ct are AMOS's label values of those organs, and its label map
    takes AMOS's liver, spleen and both kidneys to the model's classes."""
    pytest.importorskip("torch")
    from certseg_rt.zoo.train_ct import BOWEL, CLASSES, VESSELS

    scan = fetch_mod.get_source("amos-ct")["scans"][0]
    named = scan["source_classes"]
    assert {named[str(v)] for v in VESSELS["amos-ct"]} == {"aorta", "inferior vena cava"}
    assert {named[str(v)] for v in BOWEL["amos-ct"]} == {"stomach", "duodenum"}
    assert tuple(scan["classes"]) == CLASSES
    assert {named[k]: CLASSES[v] for k, v in scan["label_map"].items()} == {
        "liver": "liver", "spleen": "spleen", "right kidney": "kidney", "left kidney": "kidney"}
