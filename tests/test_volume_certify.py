"""Volumes certified whole (certseg_rt.volume_certify): the joint certificate is certify_from_counts on the stacked
per-slice counts, keyed per slice; Holm over the volume is stricter than per slice; the CLI writes the mask on the
volume's grid, with every backend (torch reference, ONNX Runtime and OpenVINO engines), and evaluate scores it."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from certseg_rt import stats
from certseg_rt.certify import ABSTAIN, certify, certify_from_counts
from certseg_rt.cli import main
from certseg_rt.volume_certify import certify_volume, first_sample
from test_sampling_loop import Threshold

nib = pytest.importorskip("nibabel")


def stacked(backend, slices, n0, n, seed):
    """The counts of each slice alone (sample_counts with the slice's first sample), stacked as (C, D*H, W)."""
    c0 = [backend.sample_counts(x, n0, seed, first_sample(d, n0, n)) for d, x in enumerate(slices)]
    c = [backend.sample_counts(x, n, seed, first_sample(d, n0, n) + n0) for d, x in enumerate(slices)]
    return np.concatenate(c0, axis=1), np.concatenate(c, axis=1)


def test_the_volume_certificate_is_certify_from_counts_on_the_stacked_counts():
    rng = np.random.default_rng(0)
    slices = [np.clip(0.5 + rng.normal(0, 0.3, (1, 6, 5)), 0, 1).astype(np.float32) for _ in range(7)]
    backend = Threshold(batch_size=16)  # batches of 16 span slices (10 + 100 samples each)
    seen = []
    cert = certify_volume(backend, iter(slices), 7, n0=10, n=100, alpha=0.05, seed=3, on_slice=seen.append)
    counts0, counts = stacked(Threshold(batch_size=5), slices, 10, 100, 3)
    expected = certify_from_counts(counts0, counts, n=100, sigma=0.5, tau=0.75, alpha=0.05)
    assert cert.labels.shape == (7, 6, 5) and seen == list(range(7))
    np.testing.assert_array_equal(cert.labels, expected.labels.reshape(7, 6, 5))
    np.testing.assert_array_equal(cert.pvalues, expected.pvalues.reshape(7, 6, 5))
    assert 0 < (cert.labels != ABSTAIN).sum() < cert.labels.size  # some certified, some not: a real check
    assert len(backend.batches) == -(-7 * 110 // 16)  # full batches across slices
    bonferroni = certify_volume(Threshold(), iter(slices), 7, n0=10, n=100, alpha=0.05, seed=3, correction="bonferroni")
    np.testing.assert_array_equal(bonferroni.labels, certify_from_counts(
        counts0, counts, n=100, sigma=0.5, tau=0.75, alpha=0.05, correction="bonferroni").labels.reshape(7, 6, 5))
    with pytest.raises(ValueError, match="3 slices certified, 7 announced"):
        certify_volume(Threshold(), iter(slices[:3]), 7)


class FixedVotes:
    """Every pixel gets k of n votes for class 1 (and all n0 selection votes): p-values known exactly."""

    name, sigma, num_classes = "fixed", 0.25, 2

    def __init__(self, k):
        self.k = k

    def sample_counts(self, x, num, seed, offset):
        ones = np.full(np.shape(x)[-2:], num if offset % 110 == 0 else self.k, np.int32)
        return np.stack([num - ones, ones])


def test_holm_over_the_volume_is_stricter_than_per_slice():
    """Each slice alone passes Holm at alpha over its 16 pixels; the volume's 128 voxels do not: the joint
    family certifies nothing where slice-by-slice certification would certify everything."""
    n, alpha, pixels, depth = 100, 0.001, 16, 8
    table = stats.upper_tail_table(n, 0.75)
    k = int(np.flatnonzero(table <= alpha / pixels)[0])  # the smallest count a lone slice certifies
    assert table[k] > alpha / (pixels * depth)  # ... which the volume's family does not
    slices = [np.zeros((1, 4, 4), np.float32)] * depth
    backend = FixedVotes(k)
    for d, x in enumerate(slices):
        per_slice = certify(backend, x, n0=10, n=n, alpha=alpha, seed=d)
        assert (per_slice.labels == 1).all()
    joint = certify_volume(backend, iter(slices), depth, n0=10, n=n, alpha=alpha)
    assert (joint.labels == ABSTAIN).all()
    assert (certify_volume(FixedVotes(k + 2), iter(slices), depth, n0=10, n=n, alpha=alpha).labels == 1).all()


@pytest.fixture(scope="module")
def chest_volume(tmp_path_factory):
    """Two held-out chest phantoms at 128x128 stacked into a CT-like NIfTI volume (int16 'HU'), and its mask."""
    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom

    root = tmp_path_factory.mktemp("volume")
    phantoms = [make_phantom(HELD_OUT_SEEDS[i], size=128) for i in range(2)]
    hu = np.stack([np.round(p.image[0] * 1400 - 1000) for p in phantoms]).astype(np.int16)  # (D, rows, cols)
    affine = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 90.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]])
    (root / "images").mkdir()
    (root / "masks").mkdir()
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), affine), str(root / "images" / "ct.nii.gz"))
    masks = np.stack([p.mask for p in phantoms]).astype(np.uint8)
    nib.save(nib.Nifti1Image(masks.transpose(2, 1, 0), affine), str(root / "masks" / "ct.nii.gz"))
    return root, hu, masks, affine


# n = 53 is the least that certifies 2 x 128 x 128 voxels at alpha 0.01 (0.75^53 <= 0.01 / 32768); 57 samples a
# slice, so batches of 8 span slices
SMALL = ["--n0", "4", "--n", "53", "--alpha", "0.01"]


def model_slices(path):
    from certseg_rt.volumes import open_volume, prepare_volume

    prepared = prepare_volume(open_volume(path), None)
    return [prepared.unit_slice(k) for k in range(open_volume(path).shape[0])]


def check_volume_certificate(path, out, summary, backend):
    """The mask written equals certify_from_counts on the stacked per-slice counts of `backend`."""
    c0, c = stacked(backend, model_slices(path), 4, 53, 0)
    expected = certify_from_counts(c0, c, n=53, sigma=0.25, tau=0.75, alpha=0.01).labels.reshape(2, 128, 128)
    mask = nib.load(str(out))
    written = np.asarray(mask.dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(written, expected)
    assert (expected != ABSTAIN).mean() > 0.5  # most voxels certified: the comparison has teeth
    classes = summary["classes"]
    assert summary["certified_voxels"] == {name: int((expected == i).sum()) for i, name in enumerate(classes)}
    return mask


def test_certify_a_nifti_volume_writes_its_mask_on_the_same_grid(chest_volume, reference, tmp_path):
    root, hu, masks, affine = chest_volume
    out = tmp_path / "mask.nii.gz"
    r = CliRunner().invoke(main, ["certify", str(root / "images" / "ct.nii.gz"), "--out", str(out), "--json",
                                  "--batch-size", "8", *SMALL])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    mask = check_volume_certificate(root / "images" / "ct.nii.gz", out, summary, reference)
    assert mask.shape == (128, 128, 2) and np.allclose(mask.affine, affine)
    assert summary["geometry"]["shape"] == [2, 128, 128] and summary["geometry"]["spacing_mm"] == [3.0, 0.8, 0.8]
    assert summary["family"] == {"scope": "volume", "hypotheses": 2 * 128 * 128, "correction": "holm", "alpha": 0.01}
    assert summary["intensity_window"] == [float(hu.min()), float(hu.max())]
    assert summary["radius_at_input_resolution"] == summary["radius"] and summary["radius_in_volume_units"] is None
    assert [s["slice"] for s in summary["per_slice"]] == [0, 1]
    assert sum(s["certified_voxels"]["heart"] for s in summary["per_slice"]) == summary["certified_voxels"]["heart"]
    assert "jointly" in summary["statement"] and summary["noise"]["first_sample_of_slice"] == "d * (n0 + n) = d * 57"

    # evaluate over the folder of volumes: the record's Dice is the volume's, computed on the same certificate
    from certseg_rt.metrics import dice_per_class

    r = CliRunner().invoke(main, ["evaluate", str(root), "--out", str(tmp_path / "res"), "--batch-size", "8", *SMALL])
    assert r.exit_code == 0, r.output
    record = json.loads(next((tmp_path / "res" / "records").rglob("ct.json")).read_text())
    certified = np.asarray(mask.dataobj).transpose(2, 1, 0)
    assert record["certified_dice_heart"] == dice_per_class(certified, masks, [3])[3]
    assert record["volume"]["hypotheses"] == 2 * 128 * 128 and record["input_size"] == "2x128x128"
    assert record["clean_dice"] > 0.9 and (tmp_path / "res" / "overlays.png").is_file()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_certify_a_volume_with_an_engine(backend, chest_volume, tmp_path, request):
    root = chest_volume[0]
    engine = request.getfixturevalue("engine_dir") if backend == "onnxruntime" else \
        request.getfixturevalue("openvino_engines")["fp32"]
    out = tmp_path / "mask.nii"
    r = CliRunner().invoke(main, ["certify", str(root / "images" / "ct.nii.gz"), "--engine", str(engine), "--out",
                                  str(out), "--json", *SMALL])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    check_volume_certificate(root / "images" / "ct.nii.gz", out, summary, CertifiedSegmenter.load(engine).backend)
    assert summary["backend"].startswith(backend)


def test_a_dicom_series_is_certified_to_a_nifti_mask_with_the_series_affine(tmp_path):
    from test_volumes import write_series

    from certseg_rt.volumes import open_volume

    folder = write_series(tmp_path / "series")[0]
    out = tmp_path / "mask.nii.gz"
    r = CliRunner().invoke(main, ["certify", str(folder), "--out", str(out), "--n0", "2", "--n", "8",
                                  "--window", "-1000,400"])
    assert r.exit_code == 0, r.output
    assert "4 slices certified jointly" in r.output and "radius 0.1686 per slice" in r.output
    mask = nib.load(str(out))
    assert mask.shape == (5, 3, 4) and np.allclose(mask.affine, open_volume(folder).affine, atol=1e-5)
