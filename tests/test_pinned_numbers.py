"""README's certified Dice of the bundled models, pinned within 1 Dice point, by the very commands README gives.

README ("The bundled model and the phantom data", "Colour modalities") states, at sigma 0.25, tau 0.75, alpha
0.001, n0 10, n 100, Holm, torch reference backend, held-out phantoms 0..count-1:

    certseg-rt demo --count 6                  clean Dice 0.985, certified Dice 0.958
    certseg-rt demo --model skin --count 3     clean Dice 0.981, certified Dice 0.957
    certseg-rt demo --model polyp --count 3    clean Dice 0.911, certified Dice 0.883

A regression of the denoiser, the segmenter, the noise or the statistics that costs a Dice point fails here.
These are the suite's most expensive tests (12 certificates of 110 samples, ~30 s on 2 cores): the headline
number is worth it, and the counts are the smallest README states.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from certseg_rt.cli import main  # noqa: E402

README = {  # model: (count, clean Dice, certified Dice), as README states them
    "chest": (6, 0.985, 0.958),
    "skin": (3, 0.981, 0.957),
    "polyp": (3, 0.911, 0.883),
}


@pytest.mark.slow
@pytest.mark.parametrize("model", list(README))
def test_demo_certified_dice_is_readmes(model, tmp_path):
    count, clean, certified = README[model]
    r = CliRunner().invoke(main, ["demo", "--model", model, "--count", str(count), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["parameters"] == {"sigma": 0.25, "tau": 0.75, "alpha": 0.001, "n0": 10, "n": 100, "seed": 0,
                                     "correction": "holm"}
    assert len(summary["rows"]) == count
    assert summary["mean"]["certified_dice"] == pytest.approx(certified, abs=0.01)
    assert summary["mean"]["clean_dice"] == pytest.approx(clean, abs=0.01)
