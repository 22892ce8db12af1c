"""certseg-rt make-phantoms / evaluate: outputs, abstention convention, bad entries, resume."""
import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from certseg_rt.cli import main
from certseg_rt.errors import CertsegError
from certseg_rt.runtime.sampling import GraphBackend, device_packs

pytest.importorskip("torch")
# Few samples, so tau and alpha are loosened until some pixels certify: a 16k-pixel Holm family at
# tau 0.6 needs 0.6**n <= alpha / 16384.
FAST = ["--n0", "3", "--n", "30", "--tau", "0.6", "--alpha", "0.5"]


@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "data"
    r = CliRunner().invoke(main, ["make-phantoms", str(d), "--count", "3"])
    assert r.exit_code == 0, r.output
    return d


def test_evaluate_writes_tables_and_plots(dataset, tmp_path):
    out = tmp_path / "results"
    r = CliRunner().invoke(main, ["evaluate", str(dataset), "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    row = summary["overall"][0]
    assert row["images"] == 3 and row["sigma"] == 0.25 and 0 < row["certified_dice"] <= 1
    assert "false negatives" in summary["convention"]
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 3 and {"certified_dice_heart", "certified_iou", "abstain_rate"} <= set(rows[0])
    for name in ("dice_vs_radius.png", "overlays.png"):
        assert (out / name).stat().st_size > 1000


def test_bad_entries_are_listed_and_the_rest_evaluated(dataset, tmp_path):
    names = sorted(p.stem for p in (dataset / "images").iterdir())
    (dataset / "masks" / f"{names[0]}.png").unlink()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(dataset / "masks" / f"{names[1]}.png")
    (dataset / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "results"
    r = CliRunner().invoke(main, ["evaluate", str(dataset), "--out", str(out), *FAST])
    assert r.exit_code == 1
    failed = {f["image"]: f["reason"] for f in json.loads((out / "summary.json").read_text())["failed"]}
    assert "no mask" in failed[names[0]] and "64x64" in failed[names[1]] and "broken" in failed
    assert json.loads((out / "summary.json").read_text())["overall"][0]["images"] == 1


def test_rerun_resumes(dataset, tmp_path):
    out = tmp_path / "results"
    args = ["evaluate", str(dataset), "--out", str(out), *FAST]
    assert CliRunner().invoke(main, args).exit_code == 0
    records = sorted((out / "records").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert [p.stat().st_mtime_ns for p in records] == stamps  # finished images were not redone
    # Other parameters are another experiment: redone.
    assert CliRunner().invoke(main, args[:-1] + ["0.4"]).exit_code == 0
    assert [p.stat().st_mtime_ns for p in records] != stamps


def test_score_classes_average_only_the_named_classes_and_keep_the_records(dataset, tmp_path):
    """A data set that labels only some of the model's classes (LiTS marks liver, not the spleen) is scored
    over those: the headline columns become the named classes' own, in per_image.csv and summary.json, while
    the records keep every class (a re-run with other scored classes resumes, nothing is certified again)."""
    out = tmp_path / "results"
    args = ["evaluate", str(dataset), "--out", str(out), *FAST]
    assert CliRunner().invoke(main, args).exit_code == 0
    every = json.loads((out / "summary.json").read_text())
    stamps = [p.stat().st_mtime_ns for p in sorted((out / "records").rglob("*.json"))]
    r = CliRunner().invoke(main, args + ["--score-classes", "heart, left_lung"])
    assert r.exit_code == 0, r.output
    assert "over heart, left_lung" in r.stderr
    assert [p.stat().st_mtime_ns for p in sorted((out / "records").rglob("*.json"))] == stamps
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored_classes"] == ["heart", "left_lung"] and every["scored_classes"] == every["classes"][1:]
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    for key in ("clean_dice", "certified_dice", "certified_iou"):
        for row in rows:
            assert float(row[key]) == pytest.approx((float(row[f"{key}_heart"]) + float(row[f"{key}_left_lung"])) / 2)
        assert summary["overall"][0][key] == pytest.approx(np.mean([float(row[key]) for row in rows]))
    # Per-class columns are the same either way; the headline over all classes differs from heart + left lung's.
    assert summary["overall"][0]["certified_dice_heart"] == every["overall"][0]["certified_dice_heart"]
    assert summary["overall"][0]["certified_dice"] != every["overall"][0]["certified_dice"]


@pytest.mark.parametrize("names", ["spleen", "background", ",", "heart,liver"])
def test_score_classes_must_be_foreground_classes_of_the_model(dataset, tmp_path, names):
    out = tmp_path / "results"
    r = CliRunner().invoke(main, ["evaluate", str(dataset), "--out", str(out), "--score-classes", names, *FAST])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert "not a foreground class" in r.stderr and "heart" in r.stderr and not out.exists()


def test_another_model_under_the_same_configuration_is_redone(dataset, tmp_path):
    """Records are keyed by configuration name ("plain" for both runs below), sigma and image: a second model
    must not resume the first one's certificates."""
    out = tmp_path / "results"
    args = ["evaluate", str(dataset), "--out", str(out), "--no-denoiser", *FAST]
    assert CliRunner().invoke(main, args + ["--model", "chest"]).exit_code == 0
    records = sorted((out / "records").rglob("*.json"))
    first = [json.loads(p.read_text())["model_files"] for p in records]
    r = CliRunner().invoke(main, args + ["--model", "chest-plain-0.25"])
    assert r.exit_code == 0, r.output
    second = [json.loads(p.read_text())["model_files"] for p in records]
    assert all(a != b for a, b in zip(first, second)) and len(records) == 3


def test_evaluate_refuses_a_folder_without_images(tmp_path):
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "images/" in r.stderr and not (tmp_path / "o").exists()


# ---- evaluate_samples: a data set's images through certify_many (packed where the runner packs images) ----------

class Threshold(GraphBackend):
    """Class 1 where the noisy pixel exceeds 0.5 (a model without torch).  With packs_images, its count_runs packs
    images as the torch-cuda runners do (sampling.device_packs, at most 2 per pack) and keeps the packs it counted."""

    name = "threshold"

    def __init__(self, packs_images=False, fail_at=None):
        super().__init__(sigma=0.25, num_classes=4, channels=1, size_multiple=1, batch_size=8)
        self.packs_images, self.fail_at, self.packs = packs_images, fail_at, []

    def infer(self, x_noisy):
        return (x_noisy[:, 0] > 0.5).astype(np.uint8)

    def count_runs(self, runs, seed):
        for pack, real in device_packs(((run, self.check_image(run.x)) for run in runs), lambda shape, num: 2):
            if len(self.packs) == self.fail_at:
                raise CertsegError("the device refused this pack")
            self.packs.append((len(pack), real, pack[0][0].first))
            for run, x in pack[:real]:
                run.counts, run.counted = self.sample_counts(x, run.num, seed, run.first), run.num
                yield run


@pytest.mark.parametrize("fail_at, chunk", [(None, 64), (1, 64), (None, 2)])
def test_packed_evaluation_gives_every_image_the_record_it_has_alone(tmp_path, monkeypatch, fail_at, chunk):
    import certseg_rt.evaluate
    from certseg_rt.evaluate import evaluate_sample, evaluate_samples, list_dataset

    monkeypatch.setattr(certseg_rt.evaluate, "PACK_IMAGES", chunk)
    d = tmp_path / "data"
    assert CliRunner().invoke(main, ["make-phantoms", str(d), "--count", "5", "--size", "16"]).exit_code == 0
    (d / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    samples = list_dataset(d)
    classes = ("background", "a", "b", "c")
    clean = lambda x: (x[0] > 0.5).astype(np.uint8)  # noqa: E731
    kw = {"sigma": 0.25, "n0": 3, "n": 20, "tau": 0.6, "alpha": 0.5, "seed": 4, "correction": "holm"}
    packer = Threshold(packs_images=True, fail_at=fail_at)
    got = dict(evaluate_samples(samples, packer, clean, classes, **kw))
    assert sorted(got) == list(range(6)) and isinstance(got[0], CertsegError)  # broken.png sorts first
    alone = Threshold()
    for i, sample in enumerate(samples[1:], 1):
        want = evaluate_sample(sample, alone, clean, classes, **kw)
        labels = got[i].pop("_labels")
        assert np.array_equal(labels, want.pop("_labels")) and 0.2 < np.mean(labels != 255) < 1  # some certified
        assert {k: v for k, v in got[i].items() if k != "seconds"} == {k: v for k, v in want.items() if k != "seconds"}
    if fail_at is not None:  # the second pack refused: the five images certified alone, each with its own record
        assert packer.packs == [(2, 2, 0)]
    elif chunk == 64:  # one chunk of 6 (broken.png unreadable: 5 images and a copy), 2 per pack: 3 packs a phase
        assert packer.packs == [(2, 2, 0)] * 3 + [(2, 2, 3)] * 3  # (images, real, first sample)
    else:  # chunks of 2 samples; the first holds broken.png, so one image and a copy of it: every chunk at 2
        assert packer.packs == [(2, 2, 0), (2, 2, 3)] * 3
