"""Users' DDPM denoisers: diffusers UNet2DModels built here (random init, small widths, 32x32) with each
prediction type, learned variance and 3 channels, saved with save_pretrained next to a DDPMScheduler, through
`build-engine --denoiser DIR` and `certify --engine`; the one-step x0 against diffusers' own
`DDPMScheduler.step(...).pred_original_sample`; every denoiser the toolkit cannot take refused in one line."""
import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("onnxruntime")

from certseg_rt.cli import main  # noqa: E402
from certseg_rt.diffusion import PREDICTION_TYPES, timestep_for_sigma, x0_from_output  # noqa: E402
from certseg_rt.export.denoise_segment import OneStepDenoiser  # noqa: E402

SIZE = 32
SQRT3 = math.sqrt(3.0)


def make_unet(in_channels=1, out_channels=None, sample_size=SIZE, attention=False, seed=0, **extra):
    """A small UNet2DModel of the published DDPM shape (resnet blocks, optional attention), random init."""
    torch.manual_seed(seed)
    down, up = (("DownBlock2D", "AttnDownBlock2D"), ("AttnUpBlock2D", "UpBlock2D")) if attention else \
        (("DownBlock2D", "DownBlock2D"), ("UpBlock2D", "UpBlock2D"))
    return diffusers.UNet2DModel(sample_size=sample_size, in_channels=in_channels,
                                 out_channels=out_channels or in_channels, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=down, up_block_types=up, norm_num_groups=4,
                                 attention_head_dim=4, add_attention=attention, **extra).eval()


def make_scheduler(prediction_type="epsilon", variance_type="fixed_small", **extra):
    return diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                   clip_sample=True, prediction_type=prediction_type, variance_type=variance_type,
                                   **extra)


def save_denoiser(path, unet, scheduler):
    unet.save_pretrained(path / "unet")
    scheduler.save_pretrained(path / "scheduler")
    return path


# (name, UNet kwargs, scheduler kwargs), each built into an engine: every prediction type; learned variance
# declared by the scheduler (learned_range) and by the channel count alone (2C with fixed_small); RGB
# denoisers in front of the grayscale chest segmenter, one of the seed paper's ImageNet DDPM shape (3 -> 6
# channels, attention, trained at another size).  The formula test covers variance_type "learned" too.
DENOISERS = {
    "eps-learned-range": (dict(in_channels=1, out_channels=2), dict(variance_type="learned_range")),
    "v-rgb-learned-64": (dict(in_channels=3, out_channels=6, attention=True, sample_size=64),
                         dict(prediction_type="v_prediction")),
    "sample-rgb": (dict(in_channels=3), dict(prediction_type="sample")),
}


@pytest.fixture(scope="module")
def denoisers(tmp_path_factory):
    root = tmp_path_factory.mktemp("denoisers")
    return {name: save_denoiser(root / name, make_unet(**u), make_scheduler(**s))
            for name, (u, s) in DENOISERS.items()}


@pytest.fixture(scope="module")
def gray_image(tmp_path_factory):
    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom
    from certseg_rt.io import write_png

    path = tmp_path_factory.mktemp("images") / "gray.png"
    write_png(path, (make_phantom(HELD_OUT_SEEDS[1], size=SIZE).image[0] * 255).round().astype(np.uint8))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_refusal(result, needle):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit
    line = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(line) == 1 and needle in line[0], result.output


# ---------------------------------------------------------------------------------- the one-step formula


class FixedOutput(torch.nn.Module):
    """Stands in for the UNet so that the formula around it can be compared with diffusers'."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, x_t, t, return_dict=False):
        return (self.output,)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("variance_type, factor", [("fixed_small", 1), ("learned_range", 2), ("learned", 2),
                                                   ("fixed_small", 2)])
@pytest.mark.parametrize("sigma", [0.25, 0.5])
def test_x0_equals_diffusers_pred_original_sample(prediction_type, variance_type, factor, sigma):
    scheduler = make_scheduler(prediction_type, variance_type)
    g = torch.Generator().manual_seed(1)
    x_noisy = torch.rand(2, 3, 8, 8, generator=g) * 1.6 - 0.3
    output = torch.randn(2, 3 * factor, 8, 8, generator=g) * 1.5  # with learned variance: 6 channels
    step = timestep_for_sigma(scheduler.alphas_cumprod.numpy(), sigma, prediction_type=prediction_type)
    ours = OneStepDenoiser(FixedOutput(output), step)(x_noisy)
    x_t = np.sqrt(step.alpha_bar) * (2 * x_noisy - 1)
    # diffusers splits 2C outputs for learned variance types only; its x0 uses the first C channels either way.
    given = output if variance_type != "fixed_small" else output[:, :3]
    ref = scheduler.step(given, step.timestep, x_t, generator=g).pred_original_sample
    assert ours.shape == (2, 3, 8, 8) and ours.min() >= 0 and ours.max() <= 1
    torch.testing.assert_close(ours, (ref + 1) / 2, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(x0_from_output(x_t.numpy(), output[:, :3].numpy(), step.alpha_bar, prediction_type),
                               ref.numpy(), rtol=1e-5, atol=2e-6)
    c_x, c_out = step.x0_coefficients
    np.testing.assert_allclose(np.clip(c_x * x_t.numpy() + c_out * output[:, :3].numpy(), -1, 1), ref.numpy(),
                               rtol=1e-5, atol=2e-6)


def test_the_three_prediction_types_give_different_x0():
    """Guards against a formula that ignores the type: the same output read as eps, v or x0 differs."""
    x_t, out = np.full(4, 0.3), np.full(4, 0.2)
    x0 = {p: x0_from_output(x_t, out, 0.8, p)[0] for p in PREDICTION_TYPES}
    assert x0["epsilon"] == pytest.approx((0.3 - math.sqrt(0.2) * 0.2) / math.sqrt(0.8))
    assert x0["v_prediction"] == pytest.approx(math.sqrt(0.8) * 0.3 - math.sqrt(0.2) * 0.2)
    assert x0["sample"] == pytest.approx(0.2)


def test_average_channels_is_the_mean_of_the_denoised_channels():
    step = timestep_for_sigma(make_scheduler().alphas_cumprod.numpy(), 0.25)
    out = torch.randn(2, 3, 8, 8)
    x = torch.rand(2, 3, 8, 8)
    full = OneStepDenoiser(FixedOutput(out), step)(x)
    mean = OneStepDenoiser(FixedOutput(out), step, average_channels=True)(x)
    assert mean.shape == (2, 1, 8, 8)
    torch.testing.assert_close(mean, full.mean(dim=1, keepdim=True))


# ---------------------------------------------------------------------------------- engines


@pytest.fixture(scope="module")
def engines(denoisers, tmp_path_factory):
    """One engine per denoiser (chest segmenter at 32x32), built through the CLI; stderr kept for the notes."""
    root = tmp_path_factory.mktemp("engines")
    built = {}
    for name, path in denoisers.items():
        out = root / name
        r = CliRunner().invoke(main, ["build-engine", "--denoiser", str(path), "--image-size",
                                                      str(SIZE), "--batch-sizes", "1,4,8", "--out", str(out)])
        assert r.exit_code == 0, r.output + r.stderr
        built[name] = (out, r.stderr)
    return built


@pytest.mark.parametrize("name", DENOISERS)
def test_build_engine_and_certify_each_denoiser(engines, name, gray_image):
    unet_kwargs, sched_kwargs = DENOISERS[name]
    out, stderr = engines[name]
    m = json.loads((out / "manifest.json").read_text())
    c = unet_kwargs["in_channels"]
    d = m["denoiser"]
    assert d["prediction_type"] == sched_kwargs.get("prediction_type", "epsilon")
    assert d["channels"] == c and d["out_channels"] == unet_kwargs.get("out_channels", c)
    assert d["learned_variance"] == (d["out_channels"] == 2 * c)
    assert d["sample_size"] == [unet_kwargs.get("sample_size", SIZE)] * 2
    assert [m["input"]["height"], m["input"]["width"]] == [SIZE, SIZE]
    assert m["input"]["channels"] == c  # the noise space
    if c == 3:
        assert m["adapter"] == {"kind": "replicate", "image_channels": 1, "channels": 3,
                                "operator_norm": 1.7320508075688772}
    else:
        assert m["adapter"] is None
    assert m["parity"]["label_agreement"] >= 0.999 and m["parity"]["denoised_max_abs_diff"] < 1e-4
    if d["sample_size"] != [SIZE, SIZE]:
        assert "trained at 64x64 (its sample_size)" in stderr and "--image-size 64" in stderr
    else:
        assert "sample_size" not in stderr

    r = invoke("certify", gray_image, "--engine", out, "--n0", 4, "--n", 16, "--batch-size", 8, "--json")
    assert r.exit_code == 0, r.output
    cert = json.loads(r.stdout)
    assert cert["height"] == cert["width"] == SIZE and cert["radius"] == pytest.approx(0.25 * 0.6744897501960817)
    expected = cert["radius"] / SQRT3 if c == 3 else cert["radius"]
    assert cert["radius_at_input_resolution"] == pytest.approx(expected, rel=1e-12)
    assert (cert["adapter"] is not None) == (c == 3)


@pytest.mark.parametrize("name", DENOISERS)
def test_exported_denoiser_graph_equals_torch_and_diffusers(engines, denoisers, name):
    """denoiser.onnx (C channels out in [0, 1]; the mean of them in front of the gray segmenter) against the
    torch module and against diffusers' pred_original_sample computed from the UNet's raw output."""
    import onnxruntime as ort

    from certseg_rt.export.denoisers import load_denoiser

    out, _ = engines[name]
    unet, scheduler, _ = load_denoiser(denoisers[name])
    c = unet.config.in_channels
    step = timestep_for_sigma(scheduler.alphas_cumprod.numpy(), 0.25, scheduler.config.prediction_type)
    x = np.random.default_rng(4).random((3, c, SIZE, SIZE)).astype(np.float32) + np.float32(0.25) * \
        np.random.default_rng(5).standard_normal((3, c, SIZE, SIZE)).astype(np.float32)
    got = ort.InferenceSession(str(out / "denoiser.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x_noisy": x})[0]
    assert got.shape == (3, 1, SIZE, SIZE) and 0 <= got.min() and got.max() <= 1  # gray segmenter: 1 channel
    with torch.inference_mode():
        ours = OneStepDenoiser(unet, step, average_channels=c == 3)(torch.from_numpy(x)).numpy()
        x_t = np.sqrt(step.alpha_bar) * (2 * torch.from_numpy(x) - 1)
        raw = unet(x_t, torch.full((3,), step.timestep)).sample
        assert raw.shape[1] == unet.config.out_channels
        if raw.shape[1] == 2 * c and scheduler.config.variance_type not in ("learned", "learned_range"):
            raw = raw[:, :c]
        ref = (scheduler.step(raw, step.timestep, x_t).pred_original_sample + 1) / 2
    np.testing.assert_allclose(got, ours, atol=2e-5)
    np.testing.assert_allclose(ours, ref.mean(dim=1, keepdim=True).numpy(), atol=2e-6)


def test_rgb_denoiser_engine_and_torch_reference_agree(denoisers, engines, tmp_path, gray_image):
    """A model directory whose gray segmenter has an RGB denoiser/: `certify --model DIR` (torch) and the engine
    built from the same parts see the same replicated 3-channel noise and give the same certificate, both radii
    stated."""
    from certseg_rt.io import read_image
    from certseg_rt.runtime.backends.torch_eager import open_model
    from certseg_rt.runtime.segmenter import CertifiedSegmenter
    from certseg_rt.zoo import bundled_model_dir

    model = tmp_path / "gray-with-rgb-denoiser"
    model.mkdir()
    for f in ("segmenter.json", "segmenter.safetensors"):
        shutil.copy(bundled_model_dir("chest") / f, model / f)
    config = json.loads((model / "segmenter.json").read_text())
    config["input"].update(height=SIZE, width=SIZE)
    (model / "segmenter.json").write_text(json.dumps(config))
    shutil.copytree(denoisers["v-rgb-learned-64"], model / "denoiser")
    engine_dir = engines["v-rgb-learned-64"][0]  # chest segmenter at 32x32 with this denoiser
    runs = [invoke("certify", gray_image, *where, "--n0", 4, "--n", 24, "--batch-size", 8, "--out",
                   tmp_path / f"{i}.png", "--json") for i, where in enumerate((["--model", model],
                                                                                 ["--engine", engine_dir]))]
    a, b = (json.loads(r.stdout) for r in runs)
    assert a["adapter"] == b["adapter"] == {"kind": "replicate", "image_channels": 1, "channels": 3,
                                            "operator_norm": SQRT3}
    assert a["radius_at_input_resolution"] == b["radius_at_input_resolution"] == pytest.approx(a["radius"] / SQRT3)
    text = invoke("certify", gray_image, "--engine", engine_dir, "--n0", 4, "--n", 8, "--batch-size", 8).stdout
    assert "in the denoiser's 3-channel noise space" in text and "in the 1-channel image)" in text

    x = read_image(gray_image, 1)
    reference = open_model(model, 0.25, batch_size=8)
    engine = CertifiedSegmenter.load(engine_dir, batch_size=8)
    from PIL import Image

    masks = [np.asarray(Image.open(tmp_path / f"{i}.png")) for i in range(2)]
    assert np.mean(masks[0] == masks[1]) >= 0.99  # same noise, same computation: the same certificate
    assert reference.channels == engine.channels == 1
    ca, cb = reference.sample_counts(x, 16, seed=2, offset=0), engine.backend.sample_counts(x, 16, seed=2, offset=0)
    assert np.abs(ca - cb).sum() / ca.sum() < 1e-3
    clean = engine.segment(x)  # segmenter.onnx takes the 1-channel image
    assert clean.shape == (SIZE, SIZE) and np.array_equal(clean, reference.segment(x))
    cert = engine.certify(x, n0=4, n=16)
    assert cert.record["adapter"]["channels"] == 3 and cert.labels.shape == (SIZE, SIZE)


@pytest.mark.parametrize("kind", ["seg.onnx", "seg.pt"])
def test_rgb_denoiser_in_front_of_a_users_onnx_or_torchscript_segmenter(engines, denoisers, tmp_path, gray_image,
                                                                        kind):
    """The composed route (the fused graph assembled in ONNX): the denoiser graph ends in the channel mean, so
    the user's 1-channel graph takes its output; the engine counts as the one built from the factory."""
    from certseg_rt.export.loaders import load_model_dir
    from certseg_rt.io import read_image
    from certseg_rt.runtime.segmenter import CertifiedSegmenter
    from certseg_rt.zoo import bundled_model_dir

    seg = load_model_dir(bundled_model_dir("chest"), denoiser=False).segmenter
    example = torch.rand(1, 1, SIZE, SIZE)
    if kind == "seg.onnx":
        torch.onnx.export(seg, (example,), str(tmp_path / kind), input_names=["image"], output_names=["logits"],
                          opset_version=17, dynamo=False, dynamic_axes={"image": {0: "b"}, "logits": {0: "b"}})
    else:
        torch.jit.save(torch.jit.trace(seg, example), str(tmp_path / kind))
    out = tmp_path / "engine"
    r = invoke("build-engine", "--segmenter", tmp_path / kind, "--denoiser", denoisers["sample-rgb"], "--image-size",
               SIZE, "--batch-sizes", "1,4,8", "--out", out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["input"]["channels"] == 3 and m["adapter"]["image_channels"] == 1
    x = read_image(gray_image, 1)
    ours = CertifiedSegmenter.load(out, batch_size=8).backend.sample_counts(x, 16, seed=3, offset=0)
    factory = CertifiedSegmenter.load(engines["sample-rgb"][0], batch_size=8).backend.sample_counts(x, 16, 3, 0)
    assert np.abs(ours - factory).sum() / ours.sum() < 1e-3


def test_evaluate_with_a_replicating_engine_states_the_image_radius(engines, tmp_path):
    """evaluate's record for a gray 48x48 image on the 32x32 RGB-denoiser engine: resize and replication
    together, |A| = sqrt(3) |S|."""
    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom
    from certseg_rt.evaluate import Sample, evaluate_sample
    from certseg_rt.io import write_png
    from certseg_rt.resize import fit_to_model
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    ph = make_phantom(HELD_OUT_SEEDS[2], size=48)
    write_png(tmp_path / "a.png", (ph.image[0] * 255).round().astype(np.uint8))
    write_png(tmp_path / "a_mask.png", ph.mask)
    seg = CertifiedSegmenter.load(engines["sample-rgb"][0], batch_size=8)
    rec = evaluate_sample(Sample("a", tmp_path / "a.png", tmp_path / "a_mask.png"), seg.backend, seg.segment,
                          seg.classes, sigma=0.25, n0=4, n=16, tau=0.75, alpha=0.01, seed=0, correction="holm")
    norm = fit_to_model(np.zeros((1, 48, 48)), (SIZE, SIZE)).resize_operator_norm
    assert rec["input_size"] == "48x48" and 0 <= rec["clean_dice"] <= 1
    assert rec["radius_at_input_resolution"] == pytest.approx(rec["radius"] / (SQRT3 * norm), rel=1e-9)


def test_scheduler_settings_the_one_step_does_not_apply_are_noted(denoisers, tmp_path):
    from certseg_rt.export.loaders import load_source
    from certseg_rt.zoo import bundled_model_dir

    d = shutil.copytree(denoisers["eps-learned-range"], tmp_path / "thresholding")
    _edit_json(d / "scheduler" / "scheduler_config.json", thresholding=True)
    source = load_source(bundled_model_dir("chest"), denoiser=str(d), image_size=(SIZE, SIZE))
    assert len(source.notes) == 1 and "thresholding True) is not applied" in source.notes[0]
    plain = str(denoisers["eps-learned-range"])
    assert load_source(bundled_model_dir("chest"), denoiser=plain, image_size=(SIZE, SIZE)).notes == []
    notes = load_source(bundled_model_dir("chest"), denoiser=plain, image_size=(64, 48)).notes
    assert notes == ["the denoiser was trained at 32x32 (its sample_size) and the engine is built for 64x48: it runs "
                     "at 64x48, where it may denoise less well; to build at the denoiser's size, add --image-size 32"]


# ---------------------------------------------------------------------------------- what is refused


def _edit_json(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _refusals(root, denoisers):
    """(name, denoiser path, extra options, what the one line says)."""
    def copy(name, src="eps-learned-range"):
        return shutil.copytree(denoisers[src], root / name)

    five = copy("five-out")
    _edit_json(five / "unet" / "config.json", out_channels=5)
    flow = copy("flow")
    _edit_json(flow / "scheduler" / "scheduler_config.json", prediction_type="flow")
    cond = copy("class-conditional")
    _edit_json(cond / "unet" / "config.json", num_class_embeds=10)
    text = copy("text-conditional")
    _edit_json(text / "unet" / "config.json", _class_name="UNet2DConditionModel")
    fourier = copy("fourier")
    _edit_json(fourier / "unet" / "config.json", time_embedding_type="fourier")
    corrupt = copy("corrupt")
    (corrupt / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    no_sched = copy("no-scheduler")
    shutil.rmtree(no_sched / "scheduler")
    alone = root / "unet-alone"
    shutil.copytree(denoisers["eps-learned-range"] / "unet", alone)
    ckpt = root / "model.pt"
    ckpt.write_bytes(b"\x80\x02junk")
    latent = save_denoiser(root / "latent", make_unet(in_channels=4), make_scheduler())
    learned_t = copy("learned-time-embedding")
    _edit_json(learned_t / "unet" / "config.json", time_embedding_type="learned", num_train_timesteps=100)
    deep = save_denoiser(root / "deep", diffusers.UNet2DModel(
        sample_size=32, in_channels=1, out_channels=1, block_out_channels=(4, 4, 4, 4, 4), norm_num_groups=4,
        layers_per_block=1, down_block_types=("DownBlock2D",) * 5, up_block_types=("UpBlock2D",) * 5,
        add_attention=False), make_scheduler())
    return [
        ("out-channels", five, [], "the UNet takes 1 channel(s) and outputs 5; it must output 1 (eps, v or x0) or 2"),
        ("prediction-type", flow, [], "prediction_type is 'flow'; one-step denoising takes epsilon, v_prediction, sample"),
        ("class-conditional", cond, [], "the UNet is class-conditional (num_class_embeds 10"),
        ("text-conditional", text, [], "unet/ holds a UNet2DConditionModel"),
        ("fourier", fourier, [], "Fourier time embedding"),
        ("corrupt", corrupt, [], "cannot load the denoiser from"),
        ("no-scheduler", no_sched, [], "has no scheduler/"),
        ("unet-alone", alone, [], "looks like a UNet saved alone; save it into"),
        ("checkpoint-file", ckpt, [], "import-denoiser guided-diffusion"),
        ("missing", root / "nowhere", [], "does not exist"),
        ("learned-time-embedding", learned_t, [], "learned embeddings for 100 timesteps but its scheduler has 1000"),
        ("latent-4ch", latent, [], "the images have 1 channel(s), the denoiser takes 4, the segmenter takes 1"),
        ("gray-denoiser-rgb-images", denoisers["eps-learned-range"], ["--model", "skin"],
         "the images have 3 channel(s), the denoiser takes 1, the segmenter takes 3; give a denoiser with 3"),
        ("size-multiple", deep, ["--image-size", "40"], "must be a multiple of 16 for this model (its segmenter's and denoiser's downsampling); choose --image-size 48x48"),
    ]


def test_denoisers_the_toolkit_cannot_take_are_one_line_and_build_nothing(denoisers, tmp_path):
    for name, path, extra, needle in _refusals(tmp_path / "refused", denoisers):
        for verb in ("build-engine", "export"):
            out = tmp_path / f"{verb}-{name}"
            r = invoke(verb, "--denoiser", path, "--image-size", SIZE, *extra, "--out", out)
            assert_one_line_refusal(r, needle)
            assert not out.exists() and not list(tmp_path.glob(f".{out.name}*")), name


def test_rgb_segmenter_behind_the_gray_engine_setup_names_all_three_counts(tmp_path):
    """A user's 3-channel TorchScript segmenter with the 1-channel chest images: refused before any export."""
    seg = torch.jit.script(torch.nn.Conv2d(3, 4, 1))
    seg.save(str(tmp_path / "rgb.pt"))
    r = invoke("build-engine", "--segmenter", tmp_path / "rgb.pt", "--out", tmp_path / "e")
    assert_one_line_refusal(r, "the images have 1 channel(s), the denoiser takes 1, the segmenter takes 3; the "
                               "images must have the segmenter's channels: give --model a model directory whose "
                               "segmenter.json declares input.channels 3 (bundled: polyp, skin)")
    assert not (tmp_path / "e").exists()


def test_export_stages_its_files_and_replaces_them_as_a_set(denoisers, tmp_path, monkeypatch):
    out = tmp_path / "onnx"
    r = invoke("export", "--denoiser", denoisers["sample-rgb"], "--image-size", SIZE, "--no-parity", "--out", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["denoiser.onnx", "model.onnx", "segmenter.onnx"]
    (out / "notes.txt").write_text("the user's own file stays")
    r = invoke("export", "--denoiser", "none", "--image-size", SIZE, "--no-parity", "--out", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "notes.txt", "segmenter.onnx"]  # no stale one

    from certseg_rt.errors import CertsegError
    from certseg_rt.export import onnx_export

    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*args, **kwargs):
        raise CertsegError("parity failed (made to fail by the test)")

    monkeypatch.setattr(onnx_export, "check_graphs", fail)  # fails after every graph is written
    r = invoke("export", "--denoiser", denoisers["sample-rgb"], "--image-size", SIZE, "--out", out)
    assert_one_line_refusal(r, "parity failed")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    r = invoke("export", "--denoiser", "none", "--image-size", SIZE, "--out", tmp_path / "new")
    assert r.exit_code == 1 and not (tmp_path / "new").exists()
