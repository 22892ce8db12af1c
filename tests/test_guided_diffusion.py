"""import-denoiser guided-diffusion, checked against OpenAI's own UNetModel (guided-diffusion-sdk, the reference
implementation, a test dependency): small random models of that architecture converted through the CLI compute
the same function; the published configs' full key/shape sets map completely; bad checkpoints are refused in one
line; a converted model builds an engine and certifies; graphs over the external-data threshold work end to end."""
import argparse
import json
import os
import shutil
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # guided-diffusion's fp16 helpers use deprecated torch.cuda.amp decorators
    guided_unet = pytest.importorskip("guided_diffusion.unet")
    from guided_diffusion import script_util

from click.testing import CliRunner

from certseg_rt.cli import main
from certseg_rt.errors import CertsegError
from certseg_rt.export import guided_diffusion as gd
from certseg_rt.export.guided_config import PUBLISHED, PUBLISHED_FLAGS, config_from_flags


def reference_unet(cfg, seed=0, out_scale=1.0):
    """guided-diffusion's UNetModel for cfg, every parameter random (it zero-initialises its last convs, which
    would hide a wrong mapping behind zeros); `out_scale` scales the final conv."""
    torch.manual_seed(seed)
    model = guided_unet.UNetModel(
        image_size=cfg.image_size, in_channels=cfg.in_channels, model_channels=cfg.num_channels,
        out_channels=cfg.out_channels, num_res_blocks=cfg.num_res_blocks,
        attention_resolutions=tuple(cfg.attention_rates), channel_mult=cfg.mult, num_heads=cfg.num_heads,
        num_head_channels=cfg.num_head_channels, use_scale_shift_norm=cfg.use_scale_shift_norm,
        resblock_updown=cfg.resblock_updown, use_new_attention_order=cfg.use_new_attention_order)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
            module.reset_parameters()
        elif isinstance(module, torch.nn.GroupNorm):
            torch.nn.init.normal_(module.weight, 1.0, 0.2)
            torch.nn.init.normal_(module.bias, 0.0, 0.2)
    with torch.no_grad():
        model.out[2].weight.mul_(out_scale)
    return model.eval()


def import_cli(ckpt, out, flags=None, config="custom", extra=()):
    args = ["import-denoiser", "guided-diffusion", str(ckpt), "--config", config, "--out", str(out), *extra]
    if flags is not None:
        args += ["--model-flags", flags]
    return CliRunner().invoke(main, args)


def assert_one_line_refusal(r, needle, out):
    assert r.exit_code == 1, r.output
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.output
    assert not out.exists()
    if out.parent.is_dir():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "staging left behind"


# Small random configurations of the architecture, 32x32 images (widths multiples of GroupNorm's 32 groups).
SMALL = {
    "scale-shift, resblock up/down, 2 attention resolutions by head channels, learned sigma, RGB":
        "--image_size 32 --num_channels 32 --num_res_blocks 2 --channel_mult 1,2,2 --attention_resolutions 16,8 "
        "--num_head_channels 16 --learn_sigma True --resblock_updown True --use_scale_shift_norm True",
    "plain norm, conv resampling, num_heads 2 at one resolution, gray":
        "--image_size 32 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2,2 --attention_resolutions 16 "
        "--num_heads 2 --use_scale_shift_norm False --in_channels 1",
    "one head at two widths, learned sigma, gray, cosine":
        "--image_size 32 --num_channels 32 --num_res_blocks 1 --channel_mult 1,1,2 --attention_resolutions 32,8 "
        "--num_heads 1 --learn_sigma True --in_channels 1 --noise_schedule cosine",
    "new attention order, channel_mult 1,2,3, resblock up/down":
        "--image_size 32 --num_channels 32 --num_res_blocks 2 --channel_mult 1,2,3 --attention_resolutions 16 "
        "--num_head_channels 32 --use_new_attention_order True --resblock_updown True",
    "attention in the mid block only, 4 legacy heads":
        "--image_size 32 --num_channels 64 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 64 "
        "--num_head_channels 16 --use_scale_shift_norm True",
}


@pytest.mark.parametrize("flags", list(SMALL.values()), ids=list(SMALL))
def test_converted_unet_computes_what_guided_diffusion_computes(tmp_path, flags):
    from diffusers import DDPMScheduler, UNet2DModel

    cfg = config_from_flags(flags)
    ref = reference_unet(cfg)
    ckpt = tmp_path / "model.pt"
    torch.save(ref.state_dict(), ckpt)
    r = import_cli(ckpt, tmp_path / "ddpm", flags, extra=["--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["parameters"] == sum(p.numel() for p in ref.parameters())
    unet = UNet2DModel.from_pretrained(tmp_path / "ddpm" / "unet").eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, cfg.in_channels, 32, 32, generator=gen)
    t = torch.tensor([0, 371, 999])
    with torch.no_grad():
        want = ref(x, t)
        got = unet(x, t).sample
    assert got.shape == want.shape == (3, cfg.out_channels, 32, 32)
    assert want.std() > 0.05  # the random weights reach the output, so a wrong mapping shows
    assert (got - want).abs().max().item() <= 1e-4
    with torch.no_grad():  # the timestep matters, and is mapped: another t gives another output
        assert (unet(x, t.flip(0)).sample - want).abs().max().item() > 1e-3
    sched = DDPMScheduler.from_pretrained(tmp_path / "ddpm" / "scheduler")
    assert sched.config.variance_type == ("learned_range" if cfg.learn_sigma else "fixed_large")
    assert sched.config.prediction_type == "epsilon"


def test_individual_flags_mean_what_model_flags_mean(tmp_path):
    """--num-channels ... options and a JSON object are the same configuration as the MODEL_FLAGS string."""
    flags = SMALL["plain norm, conv resampling, num_heads 2 at one resolution, gray"]
    ckpt = tmp_path / "model.pt"
    torch.save(reference_unet(config_from_flags(flags)).state_dict(), ckpt)
    options = ["--image-size", "32", "--num-channels", "32", "--num-res-blocks", "1", "--channel-mult", "1,2,2",
               "--attention-resolutions", "16", "--num-heads", "2", "--use-scale-shift-norm", "False",
               "--in-channels", "1"]
    assert import_cli(ckpt, tmp_path / "a", extra=options).exit_code == 0
    as_json = json.dumps({"image_size": 32, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2,2",
                          "attention_resolutions": "16", "num_heads": 2, "use_scale_shift_norm": False,
                          "in_channels": 1})
    assert import_cli(ckpt, tmp_path / "b", as_json).exit_code == 0
    assert (tmp_path / "a/unet/config.json").read_text() == (tmp_path / "b/unet/config.json").read_text()
    a = (tmp_path / "a/unet/diffusion_pytorch_model.safetensors").read_bytes()
    assert a == (tmp_path / "b/unet/diffusion_pytorch_model.safetensors").read_bytes()


def _guided_model_and_diffusion(flags: str, device="meta"):
    """guided-diffusion's own scripts' parsing of a README MODEL_FLAGS string, and its model and diffusion."""
    defaults = script_util.model_and_diffusion_defaults()
    parser = argparse.ArgumentParser()
    script_util.add_dict_to_argparser(parser, defaults)
    args = parser.parse_args(flags.split())
    with torch.device(device):
        return script_util.create_model_and_diffusion(**script_util.args_to_dict(args, defaults.keys()))


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configs_map_every_tensor(name):
    """Each published config (guided-diffusion's README flags, built by its own scripts on the meta device: no
    memory): our walk yields exactly its state dict's keys and shapes, in order; the convertible ones fill every
    diffusers parameter with one of its shape; the noise schedule is its diffusion's."""
    model, diffusion = _guided_model_and_diffusion(PUBLISHED_FLAGS[name])
    cfg = PUBLISHED[name]
    ref = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(gd.expected_shapes(cfg).items()) == list(ref.items())
    if cfg.class_cond:
        with pytest.raises(CertsegError, match="class-conditional.*256x256_uncond"):
            gd.diffusers_shapes(cfg)
        return
    mapped = {target: shape for rule in gd.layout(cfg) for target, shape in rule.targets}
    assert mapped == gd.diffusers_shapes(cfg)
    gd.check_complete(mapped, cfg)
    if name == "256x256_uncond":  # the ImageNet denoiser of Carlini et al.: 552,814,086 parameters, 3 -> 6 channels
        assert sum(np.prod(s) for s in ref.values()) == 552_814_086
        assert mapped["conv_out.weight"] == (6, 256, 3, 3)
    from diffusers import DDPMScheduler

    from certseg_rt.export.guided_config import scheduler_config

    ours = DDPMScheduler(**scheduler_config(cfg)).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(ours, diffusion.alphas_cumprod, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("schedule,steps", [("linear", 1000), ("cosine", 1000), ("linear", 4000), ("cosine", 250)])
def test_noise_schedule_is_guided_diffusions(schedule, steps):
    from diffusers import DDPMScheduler
    from guided_diffusion.gaussian_diffusion import get_named_beta_schedule

    from certseg_rt.export.guided_config import scheduler_config

    cfg = config_from_flags(f"--noise_schedule {schedule} --diffusion_steps {steps}")
    ours = DDPMScheduler(**scheduler_config(cfg)).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(ours, np.cumprod(1 - get_named_beta_schedule(schedule, steps)), rtol=1e-4, atol=1e-7)


def test_legacy_and_new_attention_orders_are_different_maps():
    """The same checkpoint converted under the two qkv orders gives different q/k/v: the order flag matters."""
    cfg_legacy = config_from_flags(SMALL["new attention order, channel_mult 1,2,3, resblock up/down"]
                                   .replace("True --resblock", "False --resblock"))
    cfg_new = config_from_flags(SMALL["new attention order, channel_mult 1,2,3, resblock up/down"])
    state = reference_unet(cfg_new).state_dict()
    a, b = gd.convert_state_dict(state, cfg_legacy), gd.convert_state_dict(state, cfg_new)
    key = "mid_block.attentions.0.to_q.weight"
    assert a[key].shape == b[key].shape and not torch.equal(a[key], b[key])


def test_diagnosis_names_the_config_a_checkpoint_looks_like():
    shapes_128 = gd.expected_shapes(PUBLISHED["128x128"])
    message = gd.diagnose(shapes_128, PUBLISHED["256x256_uncond"])
    assert "--config 128x128" in message and "does not fit --config 256x256_uncond" in message
    assert gd.diagnose(gd.expected_shapes(PUBLISHED["256x256_uncond"]), PUBLISHED["lsun_cat"]) is None  # same net
    odd = dict(gd.expected_shapes(PUBLISHED["256x256_uncond"]))
    odd.pop("out.2.bias")
    assert "1 keys missing (e.g. out.2.bias)" in gd.diagnose(odd, PUBLISHED["256x256_uncond"])
    assert "matches no published config" in gd.diagnose(odd, PUBLISHED["256x256_uncond"])


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    flags = SMALL["plain norm, conv resampling, num_heads 2 at one resolution, gray"]
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(reference_unet(config_from_flags(flags)).state_dict(), path)
    return path, flags


def test_bad_checkpoints_and_configs_are_refused_in_one_line(tmp_path, small_checkpoint):
    ckpt, flags = small_checkpoint
    tensor, needs_code, nested, truncated = (tmp_path / n for n in ("tensor.pt", "code.pt", "nested.pt", "cut.pt"))
    torch.save(torch.zeros(3), tensor)
    torch.save({"args": argparse.Namespace(lr=1e-4), "w": torch.zeros(1)}, needs_code)
    torch.save({"model": torch.load(ckpt, weights_only=True)}, nested)
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    out = tmp_path / "ddpm"
    cases = [
        (tensor, out, flags, "custom", "not a state dict of tensors (it holds a Tensor)"),
        (nested, out, flags, "custom", "not a state dict of tensors (it holds a dict with keys model)"),
        (needs_code, out, flags, "custom", "would run code"),
        (truncated, out, flags, "custom", "truncated or not a torch.save file"),
        (tmp_path / "nope.pt", out, flags, "custom", "does not exist"),
        (ckpt, out, None, "256x256_uncond", "does not fit --config 256x256_uncond"),
        (ckpt, out, flags.replace("--num_res_blocks 1", "--num_res_blocks 2"), "custom",
         "does not fit --config custom"),
        (ckpt, out, None, "128x128", "class-conditional"),
        (ckpt, out, flags, "256x256_uncond", "apply to --config custom only"),
        (ckpt, out, "--image_size abc", "custom", "image_size='abc' is not a valid int"),
        (ckpt, out, "--num_chanels 32", "custom", "unknown guided-diffusion model flag 'num_chanels'"),
        (ckpt, out, flags.replace("--channel_mult 1,2,2", "--channel_mult 1,3,2"), "custom",
         "num_heads=2 at attention widths"),
        (ckpt, tmp_path / "file" / "ddpm", flags, "custom", "not a writable folder"),
        (tmp_path / "file", out, flags, "custom", "not a torch.save"),  # a text file
        (ckpt, out, flags.replace("--attention_resolutions 16", "--attention_resolutions 0"), "custom",
         "must list resolutions >= 1"),
    ]
    for path, dest, model_flags, config, needle in cases:
        r = import_cli(path, dest, model_flags, config)
        assert_one_line_refusal(r, needle, dest)
    r = import_cli(ckpt, tmp_path / "full", flags)
    assert r.exit_code == 1 and "already exists" in r.stderr
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    r = import_cli(ckpt, tmp_path / "ddpm", None, "128x128")
    assert "use --config 256x256_uncond" in r.stderr


def test_class_conditional_and_unexpressible_configs_say_why(tmp_path, small_checkpoint):
    ckpt, _ = small_checkpoint
    for name in ("64x64", "128x128", "256x256", "512x512"):
        r = import_cli(ckpt, tmp_path / "x", None, name)
        assert r.exit_code == 1 and "needs an ImageNet class label" in r.stderr, r.output
    half = "--image_size 64 --num_channels 64 --channel_mult 0.5,1,2"
    r = import_cli(ckpt, tmp_path / "x", half)
    assert r.exit_code == 1 and "channel_mult starting at 0.5" in r.stderr


GRAY = ("--image_size 32 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 16 "
        "--num_head_channels 32 --in_channels 1 --resblock_updown True")
CERTIFY = ["--n0", "4", "--n", "60", "--tau", "0.6", "--alpha", "0.1", "--batch-size", "8", "--seed", "5"]


def _import_build(tmp_path, flags, extra=()):
    """Convert a small gray model and build an ONNX Runtime engine with it in front of the bundled chest
    segmenter at 32x32 -> (engine dir, build result)."""
    ckpt = tmp_path / "model.pt"
    # out_scale: eps_hat small, as a trained denoiser's at low noise, so the labels are not coin flips
    torch.save(reference_unet(config_from_flags(flags), out_scale=0.01).state_dict(), ckpt)
    assert import_cli(ckpt, tmp_path / "ddpm", flags).exit_code == 0
    engine = tmp_path / "engine"
    r = CliRunner().invoke(main, ["build-engine", "--denoiser", str(tmp_path / "ddpm"), "--image-size", "32",
                                  "--batch-sizes", "1,4,8", "--out", str(engine), "--json", *extra])
    return engine, r


def _certify_cli(engine, tmp_path):
    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom
    from certseg_rt.io import write_png

    scan = tmp_path / "scan.png"
    if not scan.exists():
        write_png(scan, (make_phantom(HELD_OUT_SEEDS[0], size=32).image[0] * 255).round().astype(np.uint8))
    r = CliRunner().invoke(main, ["certify", str(scan), "--engine", str(engine), *CERTIFY, "--out",
                                  str(tmp_path / f"{engine.name}-mask.png"), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout), tmp_path / f"{engine.name}-mask.png"


@pytest.fixture(scope="module")
def gray_engine(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("gray")
    engine, r = _import_build(tmp_path, GRAY)
    assert r.exit_code == 0, r.output
    return tmp_path, engine, json.loads(r.stdout)


def test_imported_denoiser_builds_an_engine_and_certifies(gray_engine):
    tmp_path, engine, manifest = gray_engine
    assert manifest["denoiser"]["graph"] == "denoiser.onnx" and manifest["parity"]["label_agreement"] >= 0.999
    assert manifest["parity"]["denoised_max_abs_diff"] <= 1e-4
    assert {"denoiser/certseg_import.json", "denoiser/unet/diffusion_pytorch_model.safetensors",
            "denoiser/scheduler/scheduler_config.json"} <= set(manifest["source_model_files"])
    cert, _ = _certify_cli(engine, tmp_path)
    assert cert["height"] == cert["width"] == 32 and cert["abstain_fraction"] < 0.5


def test_imported_learned_sigma_denoiser_builds_an_engine_and_certifies(tmp_path):
    engine, r = _import_build(tmp_path, GRAY.replace("--resblock_updown True", "--learn_sigma True"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["parity"]["label_agreement"] >= 0.999
    assert _certify_cli(engine, tmp_path)[0]["abstain_fraction"] < 0.5


def test_with_metadata_gathers_per_tensor_external_files(tmp_path, monkeypatch):
    """Above 2 GB torch's TorchScript exporter writes one file per tensor; _with_metadata gathers them into
    NAME.onnx.data (threshold lowered), removes the loose files, and the graph computes what it did."""
    import onnx
    import onnxruntime as ort

    from certseg_rt.export import onnx_files
    from certseg_rt.export.onnx_export import _with_metadata

    src = tmp_path / "src"
    src.mkdir()
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 2, 3))
    x = torch.rand(2, 1, 16, 16)
    torch.onnx.export(net, (x,), str(src / "g.onnx"), input_names=["x"], output_names=["y"], dynamo=False)
    model = onnx.load(str(src / "g.onnx"))
    onnx.save_model(model, str(src / "g.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    loose = set(os.listdir(src)) - {"g.onnx"}
    assert len(loose) >= 4  # weights and biases, one file each
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", 1024)
    out = _with_metadata(src / "g.onnx", {"sigma": 0.25})
    assert sorted(os.listdir(src)) == ["g.onnx", "g.onnx.data"]
    assert [p.name for p in onnx_files.external_data_files(out)] == ["g.onnx.data"]
    assert {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props} == {"sigma": "0.25"}
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, net(x).detach().numpy(), atol=1e-5)
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", 1 << 30)  # under the threshold: back to one file
    _with_metadata(out, {})
    assert os.listdir(src) == ["g.onnx"]


def test_engine_with_external_data_builds_certifies_and_is_hash_checked(tmp_path, monkeypatch, gray_engine):
    """The same model built with the external-data threshold lowered (so every graph gets NAME.onnx.data):
    it certifies exactly as the one-file engine does, the data files are hashed in the manifest, a tampered
    data file is refused on load, and int8 (which needs one file) says so."""
    from PIL import Image

    from certseg_rt.export import onnx_files
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    gray_dir, one_file, _ = gray_engine
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", 64 << 10)
    out = tmp_path / "engine"
    r = CliRunner().invoke(main, ["build-engine", "--denoiser", str(gray_dir / "ddpm"), "--image-size", "32",
                                  "--batch-sizes", "1,4,8", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    manifest = json.loads(r.stdout)
    graphs = {"model.onnx", "segmenter.onnx", "denoiser.onnx"}
    assert set(manifest["files"]) == graphs | {f"{g}.data" for g in graphs}
    assert set(os.listdir(out)) == set(manifest["files"]) | {"manifest.json"}
    assert (out / "model.onnx.data").stat().st_size > 4 * (out / "model.onnx").stat().st_size  # the weights moved
    assert manifest["parity"]["label_agreement"] >= 0.999
    ours, ours_mask = _certify_cli(out, tmp_path)
    theirs, theirs_mask = _certify_cli(one_file, tmp_path)
    assert ours["certified_pixels"] == theirs["certified_pixels"] and ours["abstain_fraction"] < 0.5
    assert np.array_equal(np.asarray(Image.open(ours_mask)), np.asarray(Image.open(theirs_mask)))
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    data = bytearray((tampered / "model.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(CertsegError, match=r"model.onnx.data changed since it was built"):
        CertifiedSegmenter.load(tampered)
    r = CliRunner().invoke(main, ["build-engine", "--denoiser", str(gray_dir / "ddpm"), "--image-size", "32",
                                  "--batch-sizes", "1,4,8", "--out", str(tmp_path / "int8"), "--precision", "int8"])
    assert r.exit_code == 1 and "needs the fused graph in one file" in r.stderr
    assert not (tmp_path / "int8").exists()


def test_a_model_protobuf_cannot_size_counts_as_over_the_limit(monkeypatch):
    """upb raises EncodeError from ByteSize() for a model over 2 GiB (seen on the 2.2 GB 256x256 UNet graph)."""
    from google.protobuf.message import EncodeError

    from certseg_rt.export import onnx_files

    class Huge:
        def ByteSize(self):
            raise EncodeError("Failed to serialize proto")

    assert onnx_files.serialized_bytes(Huge()) > onnx_files.EXTERNAL_DATA_THRESHOLD
