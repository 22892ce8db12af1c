"""certseg-rt make-phantoms / evaluate: outputs, abstention convention, bad entries, resume."""
import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from certseg_rt.cli import main

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


def test_evaluate_refuses_a_folder_without_images(tmp_path):
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "images/" in r.stderr and not (tmp_path / "o").exists()
