"""Engine directories (ONNX Runtime): export parity, manifest checks, torch-free runtime, parity of certificates."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from certseg_rt.cli import main
from certseg_rt.errors import CertsegError

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def test_manifest_records_what_is_certified(engine_dir):
    m = json.loads((engine_dir / "manifest.json").read_text())
    assert m["backend"] == "onnxruntime" and m["precision"] == "fp32" and m["sigma"] == 0.25
    assert m["denoiser"]["timestep"] > 0 and 0 < m["denoiser"]["alpha_bar"] < 1
    assert m["classes"] == ["background", "right_lung", "left_lung", "heart"]
    assert m["input"]["height"] == m["input"]["width"] == 128
    assert set(m["files"]) == {"model.onnx", "segmenter.onnx", "denoiser.onnx"}
    assert m["parity"]["label_agreement"] >= 0.999 and m["parity"]["logits_max_abs_diff"] < 1e-2
    for tool in ("torch", "onnx", "onnxruntime", "diffusers", "opset"):
        assert tool in m["tools"]
    assert m["onnxruntime"]["offline"] == "basic"
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(engine_dir / "model.onnx")).metadata_props}
    assert float(meta["sigma"]) == 0.25 and int(meta["timestep"]) == m["denoiser"]["timestep"]
    assert json.loads(meta["classes"]) == m["classes"] and "normalisation" in json.loads(meta["input"])


def test_engine_and_torch_see_identical_noise_and_agree(engine_dir, reference, phantom):
    from certseg_rt import certify
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    seg = CertifiedSegmenter.load(engine_dir)
    a = seg.certify(phantom.image, seed=3)
    b = certify(reference, phantom.image, seed=3)
    assert np.mean(a.labels == b.labels) >= 0.999
    assert a.record["backend"] == "onnxruntime:cpu" and b.record["backend"] == "torch-eager"
    # The per-sample labels themselves nearly coincide: same noisy inputs, same computation.
    ca = seg.backend.sample_counts(phantom.image, 16, seed=9, offset=0)
    cb = reference.sample_counts(phantom.image, 16, seed=9, offset=0)
    assert np.abs(ca - cb).sum() / ca.sum() < 1e-3


def test_engine_counts_do_not_depend_on_batch_size(engine_dir, phantom):
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    c1 = CertifiedSegmenter.load(engine_dir, batch_size=1).backend.sample_counts(phantom.image, 5, 1, 0)
    c8 = CertifiedSegmenter.load(engine_dir, batch_size=8).backend.sample_counts(phantom.image, 5, 1, 0)
    c3 = CertifiedSegmenter.load(engine_dir, batch_size=3).backend.sample_counts(phantom.image, 5, 1, 0)
    assert np.array_equal(c1, c8) and np.array_equal(c1, c3)


from engine_helpers import copy_engine, edit_manifest as _rewrite_manifest, run_without_torch  # noqa: E402


def _copy(engine_dir, tmp_path):
    return copy_engine(engine_dir, tmp_path / "engine")


def _truncate_and_rehash(d):
    from certseg_rt.manifest import sha256_file

    data = (d / "model.onnx").read_bytes()
    (d / "model.onnx").write_bytes(data[: len(data) // 3])
    _rewrite_manifest(d, lambda m: m["files"].update({"model.onnx": sha256_file(d / "model.onnx")}))


BAD_ENGINES = {
    "changed file": (lambda d: (d / "denoiser.onnx").write_bytes((d / "denoiser.onnx").read_bytes() + b"x"),
                     "files.denoiser.onnx"),
    "missing file": (lambda d: (d / "segmenter.onnx").unlink(), "missing"),
    "truncated onnx": (_truncate_and_rehash, "corrupt"),
    "manifest not json": (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON"),
    "manifest missing field": (lambda d: _rewrite_manifest(d, lambda m: m.pop("sigma")), "sigma"),
    "path outside": (lambda d: _rewrite_manifest(d, lambda m: m["files"].update({"../x": "0" * 64})), "outside"),
    "other onnxruntime": (lambda d: _rewrite_manifest(d, lambda m: m["tools"].update(onnxruntime="0.1.0")),
                          "tools.onnxruntime"),
    "format version": (lambda d: _rewrite_manifest(d, lambda m: m.update(format_version=99)), "format_version"),
    "no manifest": (lambda d: (d / "manifest.json").unlink(), "not an engine directory"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENGINES))
def test_bad_engine_directories(engine_dir, tmp_path, case, phantom):
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    breaker, needle = BAD_ENGINES[case]
    d = _copy(engine_dir, tmp_path)
    breaker(d)
    with pytest.raises(CertsegError, match=needle.replace(".", r"\.")):
        CertifiedSegmenter.load(d)
    png = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray((phantom.image[0] * 255).astype(np.uint8)).save(png)
    r = CliRunner().invoke(main, ["certify", str(png), "--engine", str(d), "--out", str(tmp_path / "m.png")])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "m.png").exists()


def test_wrong_sigma_and_wrong_size_are_refused(engine_dir, tmp_path):
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    seg = CertifiedSegmenter.load(engine_dir)
    with pytest.raises(CertsegError, match="sigma"):
        seg.certify(np.zeros((1, 128, 128), np.float32), sigma=0.5)
    with pytest.raises(CertsegError, match="built for 128x128"):
        seg.certify(np.zeros((1, 64, 64), np.float32), n0=1, n=1)


def test_tensorrt_without_gpu_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "trt"
    r = CliRunner().invoke(main, ["build-engine", "--backend", "tensorrt", "--out", str(out)])
    assert r.exit_code == 1 and "tensorrt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    import certseg_rt.export.onnx_export as onnx_export

    def fail(*a, **k):
        raise CertsegError("parity failed (simulated)")

    monkeypatch.setattr(onnx_export, "check_graphs", fail)
    out = tmp_path / "engine"
    r = CliRunner().invoke(main, ["build-engine", "--out", str(out)])
    assert r.exit_code == 1 and "simulated" in r.stderr
    assert list(tmp_path.iterdir()) == []


RUNTIME_WITHOUT_TORCH = """
    import json
    import numpy as np
    from certseg_rt.runtime.segmenter import CertifiedSegmenter
    from certseg_rt.data.phantom import make_phantom
    seg = CertifiedSegmenter.load(sys.argv[1])
    cert = seg.certify(make_phantom(10_000_001).image, n0=5, n=60, alpha=0.05)
    from certseg_rt.cli import main
    try:
        main(["certify", sys.argv[2], "--engine", sys.argv[1], "--n", "60", "--n0", "5", "--json"])
    except SystemExit as e:
        assert e.code in (0, None), e.code
    print("RUNTIME_OK", cert.abstain_fraction < 1)
"""


def test_runtime_certifies_without_torch(engine_dir, tmp_path):
    from PIL import Image
    from certseg_rt.data.phantom import make_phantom

    png = tmp_path / "img.png"
    Image.fromarray((make_phantom(10_000_002).image[0] * 255).astype(np.uint8)).save(png)
    r = run_without_torch(RUNTIME_WITHOUT_TORCH, engine_dir, png)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RUNTIME_OK True" in r.stdout
    cert = json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])
    assert cert["backend"] == "onnxruntime:cpu" and "manifest_sha256" in cert


def test_cli_json_shape_is_the_same_for_both_backends(engine_dir, tmp_path, phantom):
    from PIL import Image

    png = tmp_path / "img.png"
    Image.fromarray((phantom.image[0] * 255).astype(np.uint8)).save(png)
    args = ["certify", str(png), "--n0", "4", "--n", "12", "--alpha", "0.05", "--json"]
    a = CliRunner().invoke(main, args + ["--engine", str(engine_dir), "--out", str(tmp_path / "a.png")])
    b = CliRunner().invoke(main, args + ["--out", str(tmp_path / "b.png")])
    assert a.exit_code == b.exit_code == 0, a.output + b.output
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    common = {"radius", "abstain_fraction", "sigma", "tau", "alpha", "n0", "n", "seed", "correction", "backend",
              "seconds", "certified_pixels", "model_files", "precision", "denoiser", "classes", "mask"}
    assert common <= set(ja) and common <= set(jb)
    ma, mb = (np.asarray(Image.open(tmp_path / f)) for f in ("a.png", "b.png"))
    assert ma.dtype == mb.dtype == np.uint8 and np.mean(ma == mb) >= 0.99


@pytest.fixture(scope="module")
def user_segmenters(tmp_path_factory, chest_dir):
    """The bundled segmenter saved the ways a user brings one: TorchScript and ONNX."""
    import torch
    from certseg_rt.export.loaders import load_model_dir

    d = tmp_path_factory.mktemp("user")
    seg = load_model_dir(chest_dir, denoiser=False).segmenter
    torch.jit.save(torch.jit.trace(seg, torch.rand(1, 1, 128, 128)), str(d / "seg.pt"))
    torch.onnx.export(seg, (torch.rand(1, 1, 128, 128),), str(d / "seg.onnx"), input_names=["image"],
                      output_names=["logits"], opset_version=16, dynamo=False,
                      dynamic_axes={"image": {0: "b"}, "logits": {0: "b"}})
    return d


@pytest.mark.parametrize("kind", ["seg.pt", "seg.onnx"])
def test_user_segmenter_intake(engine_dir, user_segmenters, chest_dir, tmp_path, phantom, kind):
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    out = tmp_path / "engine"
    r = CliRunner().invoke(main, ["build-engine", "--out", str(out), "--segmenter", str(user_segmenters / kind),
                                  "--denoiser", str(chest_dir / "denoiser"), "--json"])
    assert r.exit_code == 0, r.output
    manifest = json.loads(r.stdout)
    parity = manifest["parity"]
    assert parity.get("label_agreement", parity.get("label_agreement_with_separate_graphs")) >= 0.999
    ours = CertifiedSegmenter.load(out).certify(phantom.image, n0=5, n=30, alpha=0.05, seed=2)
    bundled = CertifiedSegmenter.load(engine_dir).certify(phantom.image, n0=5, n=30, alpha=0.05, seed=2)
    assert np.mean(ours.labels == bundled.labels) >= 0.999  # the same network, brought another way


def test_factory_segmenter_and_plain_smoothing_intake(tmp_path, chest_dir, phantom):
    """--segmenter package.module:factory with safetensors weights and kwargs; --denoiser none."""
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    kwargs = json.loads((chest_dir / "segmenter.json").read_text())["kwargs"]
    out = tmp_path / "plain"
    r = CliRunner().invoke(main, ["build-engine", "--out", str(out), "--segmenter", "certseg_rt.zoo.unet:SegUNet",
                                  "--segmenter-weights", str(chest_dir / "segmenter.safetensors"),
                                  "--segmenter-kwargs", json.dumps(kwargs), "--denoiser", "none", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["denoiser"] is None and set(m["files"]) == {"model.onnx", "segmenter.onnx"}
    assert m["parity"]["label_agreement"] >= 0.999
    assert set(m["source_model_files"]) == {"segmenter.safetensors"}
    assert m["intake"]["segmenter"] == "factory certseg_rt.zoo.unet:SegUNet" and m["intake"]["kwargs"] == kwargs
    seg = CertifiedSegmenter.load(out)
    assert seg.certify(phantom.image, n0=2, n=8, alpha=0.5).labels.shape == (128, 128)


def test_bad_user_segmenters(tmp_path, user_segmenters):
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes((user_segmenters / "seg.onnx").read_bytes()[:1000])
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"not torchscript")
    cases = [(["--segmenter", str(corrupt)], "corrupt"), (["--segmenter", str(bad_pt)], "TorchScript"),
             (["--segmenter", str(user_segmenters / "seg.onnx"), "--classes", "a,b"], "4 classes"),
             (["--segmenter", "nosuch.module:make"], "cannot import"),
             (["--segmenter", "certseg_rt.zoo.unet:SegUNet"], "--segmenter-weights"),
             (["--denoiser", str(tmp_path)], "unet/"), (["--image-size", "100"], "multiple of 8"),
             (["--batch-sizes", "4,2,1"], "MIN <= OPT <= MAX"), (["--sigma", "-1"], "sigma")]
    for args, needle in cases:
        out = tmp_path / "engine"
        r = CliRunner().invoke(main, ["build-engine", "--out", str(out), *args])
        assert r.exit_code == 1 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.output)
        assert not out.exists()


def test_int8_engine_is_certified_as_itself(tmp_path, phantom, engine_dir):
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    out = tmp_path / "int8"
    r = CliRunner().invoke(main, ["build-engine", "--out", str(out), "--precision", "int8", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["precision"] == "int8" and m["quantisation"]["weights"] == "int8 per-channel"
    assert m["parity"]["label_agreement"] >= 0.99
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    cert = CertifiedSegmenter.load(out).certify(phantom.image, seed=4)
    assert cert.record["precision"] == "int8" and cert.record["model_files"]["model.onnx"] == m["files"]["model.onnx"]
    fp32 = CertifiedSegmenter.load(engine_dir).certify(phantom.image, seed=4)
    assert np.mean(cert.labels == fp32.labels) >= 0.98


def test_precision_not_available_for_onnxruntime(tmp_path):
    r = CliRunner().invoke(main, ["build-engine", "--out", str(tmp_path / "e"), "--precision", "bf16"])
    assert r.exit_code == 1 and "bf16" in r.stderr and not (tmp_path / "e").exists()
