"""Colour modalities end to end: skin (dermoscopy) and polyp (colonoscopy) phantoms, the bundled RGB
models through every CLI verb that takes a model, the torch-free runtime, and colour input handling
(RGBA, resizing to the model's input and the mask mapped back)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from certseg_rt.cli import main
from certseg_rt.data import HELD_OUT_SEEDS, TRAIN_SEEDS
from certseg_rt.data.modalities import MODALITIES, get_modality
from certseg_rt.metrics import mean_foreground_dice
from engine_helpers import run_without_torch

COLOUR = ("skin", "polyp")
FAST = ["--n0", "5", "--n", "60", "--alpha", "0.05"]  # n = 60: enough for pixels to certify under Holm


def _rgb_png(path, image):
    Image.fromarray((np.moveaxis(image, 0, -1) * 255).round().astype(np.uint8)).save(path)
    return path


# ---- phantoms -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", COLOUR)
def test_colour_phantoms_are_deterministic_rgb_and_binary(name):
    m = get_modality(name)
    assert m.channels == 3 and len(m.classes) == 2
    a, b = m.make_phantom(HELD_OUT_SEEDS[3], 128), m.make_phantom(HELD_OUT_SEEDS[3], 128)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    fractions, colourful = [], []
    for seed in TRAIN_SEEDS[:20]:
        ph = m.make_phantom(seed, 128)
        assert ph.image.shape == (3, 128, 128) and ph.image.dtype == np.float32
        assert 0.0 <= ph.image.min() and ph.image.max() <= 1.0
        assert set(np.unique(ph.mask).tolist()) == {0, 1}
        fractions.append(ph.mask.mean())
        colourful.append(ph.image[0].mean() - ph.image[2].mean())  # skin and mucosa are red, not gray
    assert 0.02 < np.mean(fractions) < 0.4 and np.std(fractions) > 0.01  # the target's size varies
    assert min(colourful) > 0.05
    other = m.make_phantom(TRAIN_SEEDS[1], 128)
    assert not np.array_equal(other.mask, m.make_phantom(TRAIN_SEEDS[0], 128).mask)


@pytest.mark.parametrize("name", COLOUR)
def test_colour_phantoms_have_a_dark_periphery(name):
    """Vignetting (dermatoscope) and the light falling off from the centre (endoscope)."""
    images = np.stack([get_modality(name).make_phantom(s, 128).image for s in TRAIN_SEEDS[:20]])
    centre = images[..., 48:80, 48:80].mean()
    corners = np.concatenate([images[..., :12, :12], images[..., -12:, -12:]], axis=-1).mean()
    assert corners < 0.6 * centre


def test_skin_hairs_and_polyp_highlights():
    skin = [get_modality("skin").make_phantom(s, 128) for s in TRAIN_SEEDS[:20]]
    # Hairs: thin, very dark strokes, also across the lesion (the mask still counts those pixels).
    dark = [(ph.image.max(axis=0) < 0.2) & (ph.mask == 1) for ph in skin]
    assert sum(d.any() for d in dark) >= 5
    polyp = [get_modality("polyp").make_phantom(s, 128) for s in TRAIN_SEEDS[:20]]
    highlights = [(ph.image.min(axis=0) > 0.75).sum() for ph in polyp]  # near-white specular spots
    assert sum(h > 0 for h in highlights) >= 15


def test_make_phantoms_modality_writes_rgb_images_and_binary_masks(tmp_path):
    r = CliRunner().invoke(main, ["make-phantoms", str(tmp_path / "d"), "--count", "2", "--modality", "polyp"])
    assert r.exit_code == 0, r.output
    images = sorted((tmp_path / "d" / "images").iterdir())
    assert [p.name for p in images] == [f"polyp_{HELD_OUT_SEEDS[0]}.png", f"polyp_{HELD_OUT_SEEDS[1]}.png"]
    with Image.open(images[0]) as im:
        assert im.mode == "RGB" and im.size == (128, 128)
    mask = np.asarray(Image.open(tmp_path / "d" / "masks" / images[0].name))
    expected = get_modality("polyp").make_phantom(HELD_OUT_SEEDS[0], 128)
    assert np.array_equal(mask, expected.mask)


# ---- the bundled colour models through the CLI ----------------------------------------------------------

@pytest.fixture(scope="module")
def colour_png(tmp_path_factory):
    d = tmp_path_factory.mktemp("colour")
    out = {}
    for name in COLOUR:
        ph = get_modality(name).make_phantom(HELD_OUT_SEEDS[20], 128)
        out[name] = (_rgb_png(d / f"{name}.png", ph.image), ph)
    return out


@pytest.mark.parametrize("name", COLOUR)
def test_certify_colour_model_segments_its_phantom(name, colour_png, tmp_path):
    png, ph = colour_png[name]
    r = CliRunner().invoke(main, ["certify", str(png), "--model", name, "--out", str(tmp_path / "m.png"), "--json"])
    assert r.exit_code == 0, r.output
    cert = json.loads(r.stdout)
    assert cert["classes"] == list(MODALITIES[name].classes) and cert["modality"] == name
    assert cert["resized"] is False and cert["radius_at_input_resolution"] == cert["radius"]
    labels = np.asarray(Image.open(tmp_path / "m.png"))
    # Pinned within 1 Dice point of what this certificate gave when the test was written (torch reference, defaults).
    assert mean_foreground_dice(labels, ph.mask, 2) == pytest.approx({"skin": 0.910, "polyp": 0.906}[name], abs=0.01)


def test_certify_resizes_to_the_model_and_maps_the_mask_back(colour_png, tmp_path):
    """A 200x160 image: certified at 128x128, mask back at 200x160 by nearest neighbour, and the radius at
    the image's resolution is the model's divided by the resize's operator norm."""
    from certseg_rt.certify import certify
    from certseg_rt.io import read_image
    from certseg_rt.resize import fit_to_model
    from certseg_rt.runtime.backends.torch_eager import open_model
    from certseg_rt.zoo import bundled_model_dir

    png, _ = colour_png["skin"]
    big = tmp_path / "big.png"
    Image.open(png).resize((160, 200), Image.Resampling.BICUBIC).save(big)
    r = CliRunner().invoke(main, ["certify", str(big), "--model", "skin", *FAST, "--out", str(tmp_path / "m.png"),
                                  "--json"])
    assert r.exit_code == 0, r.output
    assert "certified at the model's 128x128" in r.stderr
    cert = json.loads(r.stdout)
    assert cert["resized"] and cert["input_size"] == [200, 160] and cert["model_input_size"] == [128, 128]
    mask = np.asarray(Image.open(tmp_path / "m.png"))
    assert mask.shape == (200, 160) and (mask == 1).any() and (mask == 0).any()
    # The same certification by hand: resize, certify at 128x128, nearest neighbour back.
    x = read_image(big, 3)
    fit = fit_to_model(x, (128, 128))
    backend = open_model(bundled_model_dir("skin"), 0.25)
    by_hand = certify(backend, fit.image(x), n0=5, n=60, alpha=0.05)
    assert np.array_equal(fit.labels_back(by_hand.labels), mask)
    assert cert["radius_at_input_resolution"] == pytest.approx(by_hand.radius / fit.operator_norm)
    assert 0 < fit.operator_norm < 1  # shrinking averages pixels: the radius in the original image is larger


def test_rgba_input_drops_alpha_with_a_note(colour_png, tmp_path):
    png, _ = colour_png["polyp"]
    rgba = np.concatenate([np.asarray(Image.open(png)), np.full((128, 128, 1), 200, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    outs = []
    for path, name in ((png, "rgb"), (tmp_path / "rgba.png", "rgba")):
        r = CliRunner().invoke(main, ["certify", str(path), "--model", "polyp", *FAST,
                                      "--out", str(tmp_path / f"{name}-mask.png")])
        assert r.exit_code == 0, r.output
        outs.append(r.stderr)
    assert "alpha channel dropped" in outs[1] and "alpha" not in outs[0]
    assert (tmp_path / "rgb-mask.png").read_bytes() == (tmp_path / "rgba-mask.png").read_bytes()
    assert (np.asarray(Image.open(tmp_path / "rgb-mask.png")) == 1).any()  # the polyp is certified, not abstained


@pytest.mark.parametrize("name", COLOUR)
def test_demo_colour_model_draws_colour_overlays(name, tmp_path):
    r = CliRunner().invoke(main, ["demo", "--model", name, "--count", "1", *FAST, "--out", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    img = np.asarray(Image.open(tmp_path / "demo" / "phantom_000.png")).astype(int)
    left = img[:, :128]  # the image itself, drawn in colour
    assert np.abs(left[..., 0] - left[..., 2]).mean() > 10
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["modality"] == name


# ---- export, engines, the torch-free runtime ---------------------------------------------------------------

@pytest.fixture(scope="module")
def colour_engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour-engines")
    for name in COLOUR:
        r = CliRunner().invoke(main, ["build-engine", "--model", name, "--out", str(root / name),
                                      "--batch-sizes", "1,16,32"])
        assert r.exit_code == 0, r.output
    return root


@pytest.mark.parametrize("name", COLOUR)
def test_colour_engine_matches_torch_with_the_same_noise(name, colour_engines, colour_png):
    from certseg_rt.certify import certify
    from certseg_rt.runtime.backends.torch_eager import open_model
    from certseg_rt.runtime.segmenter import CertifiedSegmenter
    from certseg_rt.zoo import bundled_model_dir

    seg = CertifiedSegmenter.load(colour_engines / name)
    assert seg.channels == 3 and seg.manifest["modality"] == name
    assert seg.manifest["input"]["channels"] == 3
    _, ph = colour_png[name]
    engine = seg.certify(ph.image, n0=10, n=100)
    torch_cert = certify(open_model(bundled_model_dir(name), 0.25), ph.image, n0=10, n=100)
    assert np.mean(engine.labels == torch_cert.labels) >= 0.999
    assert engine.record["modality"] == name


def test_export_colour_model_writes_three_channel_graphs(tmp_path):
    import onnx

    r = CliRunner().invoke(main, ["export", "--model", "skin", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    fused = onnx.load(str(tmp_path / "model.onnx"))
    dims = [d.dim_value or d.dim_param for d in fused.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 128, 128]


RUNTIME_WITHOUT_TORCH = """
    from certseg_rt.cli import main
    try:
        main(["certify", sys.argv[2], "--engine", sys.argv[1], "--n", "60", "--n0", "5", "--alpha", "0.05", "--json"])
    except SystemExit as e:
        assert e.code in (0, None), e.code
"""


@pytest.mark.parametrize("name", COLOUR)
def test_colour_engine_certifies_without_torch(name, colour_engines, colour_png):
    png, _ = colour_png[name]
    r = run_without_torch(RUNTIME_WITHOUT_TORCH, colour_engines / name, png)
    assert r.returncode == 0, r.stderr[-2000:]
    cert = json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])
    assert cert["backend"] == "onnxruntime:cpu" and cert["modality"] == name
    assert cert["certified_pixels"][MODALITIES[name].classes[1]] > 0


# ---- evaluate per modality, with the bad cases listed ----------------------------------------------------------

def test_evaluate_colour_dataset_lists_bad_masks_and_reports_the_modality(colour_engines, tmp_path):
    data = tmp_path / "skin"
    assert CliRunner().invoke(main, ["make-phantoms", str(data), "--count", "2", "--modality", "skin"]).exit_code == 0
    good = sorted((data / "images").iterdir())[0]
    mask = np.asarray(Image.open(data / "masks" / good.name))
    for bad, bad_mask in (("white255", mask * 255), ("label2", np.where(mask == 1, 2, 0).astype(np.uint8)),
                          ("small", mask[:64, :64])):
        (data / "images" / f"{bad}.png").write_bytes(good.read_bytes())
        Image.fromarray(bad_mask).save(data / "masks" / f"{bad}.png")
    out = tmp_path / "res"
    r = CliRunner().invoke(main, ["evaluate", str(data), "--engine", str(colour_engines / "skin"), "--out", str(out),
                                  *FAST])
    assert r.exit_code == 1, r.output
    summary = json.loads((out / "summary.json").read_text())
    reasons = {f["image"]: f["reason"] for f in summary["failed"]}
    assert "0/255" in reasons["white255"] and "mask // 255" in reasons["white255"]
    assert "labels [2]" in reasons["label2"] and "does not know" in reasons["label2"]
    assert "64x64" in reasons["small"] and "128x128" in reasons["small"]
    (row,) = summary["overall"]
    assert row["modality"] == "skin" and row["images"] == 2
    assert row["certified_dice"] == pytest.approx(0.946, abs=0.01)  # pinned: the two good images, n0 5, n 60
    assert summary["classes"] == ["skin", "lesion"]


def test_evaluate_resized_dataset_scores_at_the_image_size(tmp_path):
    """Images (and masks) at 192x192 for a 128x128 model: scored at 192x192 against the given masks."""
    data = tmp_path / "polyp"
    r = CliRunner().invoke(main, ["make-phantoms", str(data), "--count", "2", "--modality", "polyp", "--size", "192"])
    assert r.exit_code == 0
    out = tmp_path / "res"
    r = CliRunner().invoke(main, ["evaluate", str(data), "--model", "polyp", "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    records = sorted((out / "records").rglob("*.json"))
    rec = json.loads(records[0].read_text())
    assert rec["input_size"] == "192x192" and rec["radius_at_input_resolution"] > rec["radius"]
    assert rec["certified_dice"] == pytest.approx(0.909, abs=0.01)  # pinned: n0 5, n 60, scored at 192x192


# ---- bench on a colour model ----------------------------------------------------------------------------------------

def test_bench_colour_model_rows(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--model", "polyp", "--quick", "--sizes", "64", "--engines",
                                  "onnxruntime:fp32,tensorrt:fp16", "--references", "torch-eager:fp32",
                                  "--repeats", "1", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["model"] == "polyp"
    assert {row["backend"] for row in result["rows"]} == {"reference-loop", "torch-eager", "onnxruntime"}
    assert all(row["image_size"] == 64 and row["certified_dice"] is not None for row in result["rows"])
    assert result["skipped"]["tensorrt:fp16"]  # no GPU here


# ---- kernels: noise over all channels ------------------------------------------------------------------------------

def test_noise_differs_between_the_channels_of_one_sample():
    from certseg_rt import kernels
    from certseg_rt._ext_loader import ext

    x = np.full((3, 64, 64), 0.5, np.float32)
    for impl in (kernels, ext) if ext is not None else (kernels,):
        out = np.empty((2, 3, 64, 64), np.float32)
        impl.fill_noisy(x, 1.0, 7, 0, out)
        eps = (out - 0.5).reshape(2, 3, -1)
        for a, b in ((0, 1), (0, 2), (1, 2)):
            assert abs(np.corrcoef(eps[0, a], eps[0, b])[0, 1]) < 5 / np.sqrt(eps.shape[-1])
        assert abs(eps.std() - 1.0) < 0.02


def test_info_lists_the_bundled_models_with_their_modality():
    r = CliRunner().invoke(main, ["info", "--json"])
    assert r.exit_code == 0, r.output
    models = json.loads(r.stdout)["models"]
    for name in COLOUR:
        assert models[name] == {"modality": name, "channels": 3, "classes": list(MODALITIES[name].classes),
                                "denoiser": True}
        for sigma in ("0.25", "0.5"):
            assert models[f"{name}-plain-{sigma}"]["denoiser"] is False
    assert models["chest"]["channels"] == 1 and models["chest"]["modality"] == "chest"


def test_torch_bf16_backend_is_certified_as_itself(colour_png):
    """bf16 (CPU autocast) is another base model: its certificate says bf16, and its labels stay close to fp32's."""
    from certseg_rt.certify import certify
    from certseg_rt.runtime.backends.torch_eager import open_model
    from certseg_rt.zoo import bundled_model_dir

    _, ph = colour_png["skin"]
    fp32 = certify(open_model(bundled_model_dir("skin"), 0.25), ph.image, n0=5, n=60, alpha=0.05)
    bf16 = certify(open_model(bundled_model_dir("skin"), 0.25, precision="bf16"), ph.image, n0=5, n=60,
                   alpha=0.05)
    assert bf16.record["precision"] == "bf16" and fp32.record["precision"] == "fp32"
    assert np.mean(bf16.labels == fp32.labels) > 0.97
    assert mean_foreground_dice(bf16.labels, ph.mask, 2) == pytest.approx(0.905, abs=0.01)  # fp32: 0.906
    with pytest.raises(ValueError, match="fp32 or bf16"):
        open_model(bundled_model_dir("skin"), 0.25, precision="fp16")
