"""The liver-ct model's training pieces on hand-made volumes: training slices (crops, warps, small
cross-sections), the LiTS-style validation crops, the soft Dice loss, the teacher's pseudo-labels, and
train_ct end to end with a held-out scan and a pseudo-labelled one."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from certseg_rt.zoo.ct_slices import IGNORE, CTVolume, liver_crops, sample  # noqa: E402


def _abdomen(slices: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(L, P, S) HU and labels: soft tissue in air, a bright "liver" on the patient's right."""
    hu = np.full((60, 50, slices), -40.0, np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    labels[5:25, 10:40, 2:slices - 2] = 1  # the patient's right = low L index = the image's left
    hu[labels == 1] = 160.0
    hu[:2], hu[-2:], hu[:, :2], hu[:, -2:] = -1000, -1000, -1000, -1000  # air around the body
    return hu, labels


@pytest.mark.parametrize("warp", [False, True])
def test_training_slices_keep_image_and_labels_aligned_and_sides(warp):
    """Whatever ct_slices draws (crops, zooms, rotations, elastic warps, contrast, lesions), the label lies on
    the bright organ of the image and the organ stays on its side (no left/right flips)."""
    vol = CTVolume("synthetic", *_abdomen())
    rng = np.random.default_rng(0)
    for _ in range(40):
        x, y = sample(vol, rng, warp=warp, small_bias=0.5)
        assert x.shape == (1, 128, 128) and y.shape == (128, 128) and float(x.min()) >= 0 and float(x.max()) <= 1
        liver = (y == 1).numpy()
        if liver.sum() < 50 or (~liver).sum() < 50:
            continue
        img = x[0].numpy()
        assert img[liver].mean() > img[~liver].mean() + 0.1  # lesions darken the organ, never below its surround
        cols = np.nonzero(liver.any(axis=0))[0]
        assert cols.mean() < 64 + 20  # the right-sided organ stays on the image's left half (crops shift it a bit)


def test_small_cross_sections_are_drawn_when_asked():
    """small_bias 1: every liver slice drawn is one whose section is < 30% of the largest (here the slices
    whose surroundings were made darker, so the image tells which slice was drawn)."""
    hu, labels = _abdomen(slices=10)
    labels[:, :, 2:4] = 0
    labels[5:9, 10:16, 2:4] = 1  # two small sections (24 px vs 600)
    hu[:] = np.where(labels == 1, 160.0, 0.0)
    hu[2:-2, 2:-2, 2:4][labels[2:-2, 2:-2, 2:4] == 0] = -100.0
    hu[:2], hu[-2:], hu[:, :2], hu[:, -2:] = -1000, -1000, -1000, -1000
    vol = CTVolume("synthetic", hu, labels)
    assert vol.small_slices.tolist() == [2, 3] and vol.liver_slices.tolist() == list(range(2, 8))
    rng = np.random.default_rng(1)

    def drawn_small(bias, n):
        small = 0
        for _ in range(n):
            x, y = sample(vol, rng, liver_bias=1.0, small_bias=bias, organs=False)
            tissue = x[0][(y == 0) & (x[0] > 0.01)]  # not air; window jitter moves levels, -100 vs 0 HU stay apart
            small += float(tissue.median()) < 0.25
        return small
    assert drawn_small(1.0, 20) == 20
    assert 3 <= drawn_small(0.0, 30) <= 20  # uniform over the 6 liver slices: 2 in 6 small


def test_oral_contrast_fills_bowel_lumen_only_and_labels_it_background():
    """A bowel loop (a ring of wall around fluid, with a pocket of gas) and a second loop: filled loops get
    150..600 HU in their lumen, the wall's outer pixel and the gas keep theirs, and nothing outside the bowel
    changes; sample(oral=1) then shows bright pixels labelled background, oral=0 never does."""
    from certseg_rt.zoo.ct_slices import _oral_contrast

    hu = torch.full((40, 40), -40.0)
    bowel = torch.zeros(40, 40, dtype=torch.int64)
    bowel[5:17, 5:17] = 1
    bowel[25:35, 25:35] = 1
    hu[bowel == 1] = 10.0  # fluid-filled loops
    hu[9:12, 9:12] = -900.0  # gas in the first loop
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = _oral_contrast(hu, bowel, rng)
        assert torch.equal(out[bowel == 0], hu[bowel == 0])  # outside the bowel (the blur reaches the wall only)
        assert torch.equal(out[9:12, 9:12], hu[9:12, 9:12])  # gas stays gas
        assert float((out - hu).min()) >= 0 and float(out.max()) <= 600 * 1.15 + 1
        for r0, r1, c0, c1 in ((5, 17, 5, 17), (25, 35, 25, 35)):
            centre = out[r0 + 2:r1 - 2, c0 + 2:c1 - 2]
            centre = centre[centre > -300]
            assert float(centre.min()) > 100 or torch.equal(centre, torch.full_like(centre, 10.0))  # all or none
    assert any(float(_oral_contrast(hu, bowel, rng)[30, 30]) > 100 for _ in range(10))

    vhu, labels = _abdomen()
    vbowel = np.zeros(vhu.shape, bool)
    vbowel[30:50, 15:30, :] = True  # a loop beside the "liver", soft tissue (-40 HU) inside
    vol = CTVolume("synthetic", vhu, labels, bowel=vbowel)
    for oral, expect in ((1.0, True), (0.0, False)):
        rng = np.random.default_rng(2)
        bright = []
        for _ in range(10):
            x, y = sample(vol, rng, liver_bias=0.0, organs=False, oral=oral)
            bright.append(bool(((x[0] > 0.95) & (y == 0)).any()))  # > 230 HU, windowed: only oral contrast
        assert any(bright) == expect


def test_liver_crops_are_the_livers_bounding_box_windowed():
    hu, labels = _abdomen()
    x, y = liver_crops(CTVolume("synthetic", hu, labels))
    assert x.shape == (8, 1, 128, 128) and y.shape == (8, 128, 128)
    assert bool((y == 1).all())  # the crop is exactly the (rectangular) liver's box
    assert torch.allclose(x, torch.full_like(x, (160 + 150) / 400))  # [-150, 250] HU -> [0, 1]


def test_soft_dice_loss_counts_each_image_and_skips_ignored_pixels():
    from certseg_rt.zoo.train import soft_dice_loss

    def logits_for(pred):  # near-certain logits for a label map
        return torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 60 - 30

    y = torch.zeros(2, 16, 16, dtype=torch.long)
    y[0, 2:4, 2:5] = 1  # image 0: a small liver (6 px), missed entirely
    y[1, 1:15, 1:15] = 1  # image 1: a large liver (196 px), found exactly
    pred = y.clone()
    pred[0] = 0
    loss = soft_dice_loss(logits_for(pred), y)
    # Per image and class present: Dice (2*0 + 1) / (6 + 1) and 1 -> loss = 1 - (1/7 + 1) / 2, whatever the sizes.
    assert float(loss) == pytest.approx(1 - (1 / 7 + 1) / 2, abs=1e-4)
    assert float(soft_dice_loss(logits_for(y), y)) == pytest.approx(0, abs=1e-4)
    y_ignored = y.clone()
    y_ignored[0, 2:4, 2:5] = IGNORE  # the missed organ is unsure: nothing left to miss
    assert float(soft_dice_loss(logits_for(pred), y_ignored)) == pytest.approx(0, abs=1e-4)


class _Teacher(torch.nn.Module):
    """A segmenter whose softmax is a fixed table over intensity bands (exact probabilities)."""

    BANDS = torch.tensor([0.425, 0.625, 0.725, 0.8875])  # between the levels below in [0, 1]: (HU + 150) / 400
    TABLE = torch.tensor([[0.96, 0.02, 0.01, 0.01],   # -40 HU: background (sure)
                          [0.50, 0.48, 0.01, 0.01],   # 80 HU: unsure
                          [0.25, 0.70, 0.04, 0.01],   # 120 HU: liver, not sure (rim)
                          [0.02, 0.95, 0.02, 0.01],   # 160 HU: liver (sure)
                          [0.02, 0.02, 0.01, 0.95]])  # 250 HU: "kidney" (sure)

    def forward(self, x):
        band = torch.bucketize(x[:, 0], self.BANDS)
        return self.TABLE[band].permute(0, 3, 1, 2).log()


def test_pseudo_labels_keep_the_teachers_confident_connected_organs():
    from certseg_rt.zoo.pseudo_label import pseudo_label

    hu = np.full((64, 64, 10), -40.0, np.float32)  # (L, P, S)
    hu[:2], hu[-2:], hu[:, :2], hu[:, -2:] = -1000, -1000, -1000, -1000
    hu[8:30, 8:40, 1:9] = 120.0  # rim of the liver: likely liver
    hu[12:26, 12:36, 1:9] = 160.0  # its core: sure
    hu[40:46, 40:46, 3:6] = 160.0  # a stray sure blob: not the largest component
    hu[40:50, 10:20, 1:9] = 120.0  # likely liver, touching no sure core
    hu[50:58, 30:40, 2:8] = 250.0  # sure "kidney": never taught from pseudo-labels
    hu[8:20, 48:58, 1:9] = 80.0  # unsure
    labels, summary = pseudo_label(_Teacher(), CTVolume("unlabelled", hu, None))
    lab = np.transpose(labels, (2, 1, 0))  # back to (L, P, S)
    core, rim = lab[14:24, 14:34, 3:7], lab[10:12, 10:38, 3:7]
    assert (core == 1).all() and (rim == 1).all()  # hysteresis: the rim touching the core is liver
    assert (lab[41:45, 41:45, 4] == IGNORE).all()  # the stray blob
    assert (lab[42:48, 12:18, 3:7] == IGNORE).all()  # likely liver far from the core
    assert (lab[52:56, 32:38, 3:7] == IGNORE).all()  # kidney
    assert (lab[10:18, 50:56, 3:7] == IGNORE).all()  # unsure
    assert (lab[5:60, 44:46, 3:7][lab[5:60, 44:46, 3:7] != IGNORE] == 0).all()
    assert (lab[32:38, 50:60, 3:7] == 0).all()  # sure background
    assert summary["voxels"]["kidney"] == 0 and summary["liver_slices"] == 8


@pytest.mark.slow
def test_train_ct_holds_out_validates_and_pseudo_labels(tmp_path):
    """train_ct on a fetch-data-like folder of hand-made volumes: the held-out scan is validated (LiTS-style
    crops) and never trained on, the unlabelled one is pseudo-labelled by the teacher, training.json says so."""
    import nibabel as nib

    from certseg_rt.zoo import bundled_model_dir
    from certseg_rt.zoo.train_ct import main as train_ct

    data = tmp_path / "data"
    (data / "volumes").mkdir(parents=True)
    scans = []
    for name, labelled in (("a", True), ("b", True), ("c", False)):
        hu, labels = _abdomen()
        nib.save(nib.Nifti1Image(hu, np.eye(4)), str(data / "volumes" / f"{name}.nii.gz"))
        if labelled:
            nib.save(nib.Nifti1Image(labels, np.eye(4)), str(data / "volumes" / f"{name}_label.nii.gz"))
        scans.append({"name": name, "modality": "ct", "role": "train", "labels": "hand-made",
                      "classes": ["background", "liver", "spleen", "kidney"] if labelled else None})
    (data / "provenance.json").write_text(json.dumps({
        "source": "handmade", "scans": scans, "archive": {"package": "none", "version": "0", "sha256": "0" * 64}}))
    out = tmp_path / "model"
    train_ct(["--data", str(data), "--out", str(out), "--plain-sigma", "0", "--segmenter-steps", "4", "--pool", "16",
              "--hold-out", "b", "--val-every", "2", "--pseudo-label", "c", "--teacher",
              str(bundled_model_dir("liver-ct")), "--weights-dtype", "fp32"])
    log = json.loads((out / "training.json").read_text())
    assert [h["step"] for h in log["validation"]] == [2, 4] and log["validation_scans"] == ["b"]
    assert log["recipe"]["oral_contrast"] == 0.5  # the default; this hand-made source has no bowel labels
    with pytest.raises(SystemExit):
        train_ct(["--data", str(data), "--out", str(tmp_path / "bad"), "--oral-contrast", "1.5"])
    assert not (tmp_path / "bad").exists()
    assert set(log["validation"][0]["b"]) == {"liver_dice", "slices", "small_sections"}
    assert log["validation"][0]["b"]["slices"] == 8
    used = {s["scan"]: s for s in log["data"][0]["scans"]}
    assert used["c"]["segmenter"] and used["c"]["labels"].startswith("pseudo-labels")
    assert log["pseudo_labels"]["scans"]["c"]["voxels"]["ignored"] >= 0
    assert len(log["pseudo_labels"]["teacher_segmenter_sha256"]) == 64
    assert (out / "segmenter.safetensors").is_file()

    # --finetune keeps the denoiser in --out: the record says which scans reached it (those its own run named).
    import shutil

    kept = tmp_path / "kept"
    shutil.copytree(bundled_model_dir("liver-ct") / "denoiser", kept / "denoiser")
    (kept / "training.json").write_text(json.dumps({"command": "round 1", "denoiser": {"volumes": ["a"]}}))
    train_ct(["--data", str(data), "--out", str(kept), "--finetune", "--segmenter-steps", "2", "--pool", "8",
              "--weights-dtype", "fp32"])
    log = json.loads((kept / "training.json").read_text())
    assert log["denoiser"]["kept by"] == "--finetune" and log["denoiser"]["command"] == "round 1"
    assert {s["scan"]: s["denoiser"] for s in log["data"][0]["scans"]} == {"a": True, "b": False, "c": False}
