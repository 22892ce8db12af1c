"""OpenVINO engines: build and load per precision, parity with torch fp32, the certificate against ONNX Runtime's,
determinism, refusals, and the runtime without torch."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from certseg_rt.cli import main
from certseg_rt.errors import CertsegError

pytest.importorskip("torch")
ov = pytest.importorskip("openvino")

from engine_helpers import copy_engine, edit_manifest, run_without_torch  # noqa: E402

PARITY_FLOOR = {"fp32": 0.999, "bf16": 0.999, "int8": 0.99}


def _load(d, **kw):
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    return CertifiedSegmenter.load(d, **kw)


def _manifest(d):
    return json.loads((d / "manifest.json").read_text())


def test_manifest_records_the_openvino_engine(openvino_engines):
    m = _manifest(openvino_engines["fp32"])
    assert m["backend"] == "openvino" and m["precision"] == "fp32"
    assert m["graphs"] == {"fused": "model.xml", "segmenter": "segmenter.xml"}
    assert {"model.xml", "model.bin", "segmenter.xml", "segmenter.bin"} <= set(m["files"])
    settings = m["openvino"]
    assert settings["version"] == m["tools"]["openvino"] == ov.get_version()
    assert settings["inference_precision"] == "f32" and settings["executed_precision"] == "f32"
    assert settings["performance_hint"] == "LATENCY" and settings["threads"] >= 1
    assert isinstance(settings["cpu_isa"], list)
    assert m["memory"]["activation_bytes_per_sample"] > 0 and m["memory"]["weights_bytes"] > 0
    # The IR keeps float32 weights (compress_to_fp16=False; fp16 would halve the .bin); conversion folds a few.
    assert (openvino_engines["fp32"] / "model.bin").stat().st_size >= 0.9 * m["memory"]["weights_bytes"]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_build_parity_and_executed_precision(openvino_engines, precision):
    if precision not in openvino_engines:
        pytest.skip("this CPU has no native bf16")
    m = _manifest(openvino_engines[precision])
    assert m["precision"] == precision
    assert m["parity"]["reference"] == "torch fp32" and m["parity"]["label_agreement"] >= PARITY_FLOOR[precision]
    layers = m["openvino"]["executed_layers"]
    if precision == "fp32":
        assert set(layers) == {"f32"}
    elif precision == "bf16":
        assert m["openvino"]["inference_precision"] == "bf16" and layers.get("bf16", 0) > layers.get("f32", 0)
    else:  # int8: most convolutions run in int8, the two final layers stay float
        assert m["openvino"]["inference_precision"] == "f32"
        assert layers.get("i8", 0) + layers.get("u8", 0) > 10 * layers.get("f32", 0) > 0
        assert len(m["quantisation"]["float_layers"]) == 2


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_runtime_labels_agree_with_torch_fp32_on_noisy_phantoms(openvino_engines, reference, precision):
    """The loaded engine, run as certify runs it (static batches, a partial last batch), against torch fp32."""
    if precision not in openvino_engines:
        pytest.skip("this CPU has no native bf16")
    import torch

    from certseg_rt.export.loaders import load_source
    from certseg_rt.export.onnx_export import parity_inputs
    from certseg_rt.zoo import bundled_model_dir

    x = parity_inputs(load_source(bundled_model_dir("chest")), 0.25, 13, seed=99)  # 8 + 4 + 1: three models
    backend = _load(openvino_engines[precision], batch_size=8).backend
    got = np.concatenate([backend.infer(np.ascontiguousarray(x[:8])).copy(), backend.infer(np.ascontiguousarray(x[8:]))])
    with torch.inference_mode():
        want = reference.model(torch.from_numpy(x)).numpy()
    assert np.mean(got == want) >= PARITY_FLOOR[precision]


def test_compiled_precision_is_the_manifest_s_not_the_plugin_default(openvino_engines):
    """On CPUs with AMX the plugin's default INFERENCE_PRECISION_HINT is bf16: an fp32 engine must set f32."""
    from certseg_rt.runtime.backends.openvino import cpu_capabilities

    backend = _load(openvino_engines["fp32"]).backend
    assert backend.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    if "BF16" in cpu_capabilities(ov.Core()):
        assert ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
    if "bf16" in openvino_engines:
        bf16 = _load(openvino_engines["bf16"]).backend
        assert bf16.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"


def test_fp32_certificate_equals_onnxruntime_fp32(openvino_engines, engine_dir, phantom):
    pytest.importorskip("onnxruntime")
    a = _load(openvino_engines["fp32"]).certify(phantom.image, seed=3)
    b = _load(engine_dir).certify(phantom.image, seed=3)
    assert np.mean(a.labels == b.labels) >= 0.999 and a.radius == b.radius
    assert a.record["backend"] == "openvino:cpu" and a.record["precision"] == "fp32"
    ca = _load(openvino_engines["fp32"]).backend.sample_counts(phantom.image, 16, seed=9, offset=0)
    cb = _load(engine_dir).backend.sample_counts(phantom.image, 16, seed=9, offset=0)
    assert np.abs(ca - cb).sum() / ca.sum() < 1e-3


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_same_seed_same_certificate(openvino_engines, phantom, precision):
    counts = lambda batch, seed: _load(openvino_engines[precision], batch_size=batch).backend.sample_counts(
        phantom.image, 27, seed=seed, offset=10)
    a = counts(8, 4)
    assert np.array_equal(a, counts(8, 4))
    assert not np.array_equal(a, counts(8, 5))  # the seed matters, so the equality above could fail
    other = counts(3, 4)  # 27 samples as 9 x 3 rather than 4 x 7: other kernels may round differently
    assert np.array_equal(a, other) if precision == "fp32" else np.abs(a - other).sum() / a.sum() < 1e-3
    params = {"n0": 5, "n": 27, "tau": 0.6, "alpha": 0.5, "seed": 4}  # loose enough that most pixels certify
    c1 = _load(openvino_engines[precision], batch_size=8).certify(phantom.image, **params)
    c2 = _load(openvino_engines[precision], batch_size=8).certify(phantom.image, **params)
    assert np.array_equal(c1.labels, c2.labels) and c1.abstain_fraction < 0.2


def test_every_sample_of_a_call_runs_at_one_batch_size(openvino_engines, phantom, monkeypatch):
    """Reduced precision may label a sample differently at another batch size, so one call must not mix sizes."""
    backend = _load(openvino_engines["int8"], batch_size=8).backend
    sizes = []
    run = backend._run
    monkeypatch.setattr(backend, "_run", lambda x, labels: sizes.append(x.shape[0]) or run(x, labels))
    counts = backend.sample_counts(phantom.image, 27, seed=1, offset=0)
    assert sizes == [7, 7, 7, 7] and counts.sum(0).max() == counts.sum(0).min() == 27  # 28 run, 27 counted
    sizes.clear()
    backend.sample_counts(phantom.image, 10, seed=1, offset=27)
    assert sizes == [5, 5]
    assert backend.call_batch(100) == 8 and _load(openvino_engines["int8"], batch_size=16).backend.call_batch(100) == 15


def test_clean_segmenter_runs_at_the_engine_precision(openvino_engines, reference, phantom):
    got = _load(openvino_engines["fp32"]).segment(phantom.image)
    assert np.array_equal(got, reference.segment(phantom.image))


# ---- refusals --------------------------------------------------------------------------------------------------

def _truncate_ir_and_rehash(d):
    from certseg_rt.manifest import sha256_file

    (d / "model.xml").write_text((d / "model.xml").read_text()[:2000])
    edit_manifest(d, lambda m: m["files"].update({"model.xml": sha256_file(d / "model.xml")}))


BAD = {
    "changed weights": (lambda d: (d / "model.bin").write_bytes((d / "model.bin").read_bytes()[:-4] + b"abcd"),
                        "files.model.bin"),
    "truncated IR, rehashed": (_truncate_ir_and_rehash, "cannot read model.xml"),
    "other OpenVINO release": (lambda d: edit_manifest(d, lambda m: m["tools"].update(openvino="2025.1.0-1-abc")),
                               "tools.openvino"),
    "no inference precision": (lambda d: edit_manifest(d, lambda m: m["openvino"].pop("inference_precision")),
                               "openvino.inference_precision"),
    "hint f16": (lambda d: edit_manifest(d, lambda m: m["openvino"].update(inference_precision="f16")),
                 "openvino.inference_precision"),
    "other sigma": (lambda d: edit_manifest(d, lambda m: m.update(sigma=0.5)), "sigma"),
    "other classes": (lambda d: edit_manifest(d, lambda m: m.update(classes=["a", "b", "c", "d"])), "classes"),
    "other input size": (lambda d: edit_manifest(d, lambda m: m["input"].update(height=256)), "field input"),
    "bad threads": (lambda d: edit_manifest(d, lambda m: m["openvino"].update(threads=0)), "openvino.threads"),
    "other batching": (lambda d: edit_manifest(d, lambda m: m["openvino"].update(batching="dynamic")),
                       "openvino.batching is 'dynamic'; this runtime batches 'static-per-call'"),
    "no batching": (lambda d: edit_manifest(d, lambda m: m["openvino"].pop("batching")), "openvino.batching is None"),
    "bad memory": (lambda d: edit_manifest(d, lambda m: m["memory"].update(weights_bytes="lots")), "field memory"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_tampered_engine_is_refused_in_one_line(openvino_engines, tmp_path, case):
    d = copy_engine(openvino_engines["fp32"], tmp_path / "engine")
    tamper, needle = BAD[case]
    tamper(d)
    with pytest.raises(CertsegError, match=needle) as e:
        _load(d)
    assert "\n" not in str(e.value)


def test_other_openvino_patch_release_is_refused_but_same_release_build_is_not(openvino_engines, tmp_path):
    from certseg_rt.runtime.backends.openvino import release

    here = release(ov.get_version())
    d = copy_engine(openvino_engines["fp32"], tmp_path / "same")
    edit_manifest(d, lambda m: m["tools"].update(openvino=f"{here}-99999-0000000-another-build"))
    _load(d)  # same release, another build string: loads
    major, minor, patch = here.split(".")
    d2 = copy_engine(openvino_engines["fp32"], tmp_path / "patch")
    edit_manifest(d2, lambda m: m["tools"].update(openvino=f"{major}.{minor}.{int(patch) + 1}-1-abc"))
    with pytest.raises(CertsegError, match="tools.openvino"):
        _load(d2)


def _without_bf16(monkeypatch):
    """Stands in for the CPU plugin's capability query: this CPU has native bf16, the simulated one does not."""
    import certseg_rt.runtime.backends.openvino as runner

    monkeypatch.setattr(runner, "cpu_capabilities", lambda core: ["FP32", "FP16", "INT8", "BIN", "EXPORT_IMPORT"])


def test_bf16_is_refused_at_load_where_the_cpu_lacks_it(openvino_engines, monkeypatch):
    if "bf16" not in openvino_engines:
        pytest.skip("this CPU has no native bf16: the refusal is the real one (see the build test)")
    _load(openvino_engines["bf16"])  # loads here
    _without_bf16(monkeypatch)
    with pytest.raises(CertsegError, match="no native bf16") as e:
        _load(openvino_engines["bf16"])
    assert "--precision fp32 or int8" in str(e.value)
    _load(openvino_engines["fp32"])  # fp32 does not need it


def test_bf16_is_refused_at_build_where_the_cpu_lacks_it(monkeypatch, tmp_path):
    _without_bf16(monkeypatch)
    out = tmp_path / "engine"
    r = CliRunner().invoke(main, ["build-engine", "--backend", "openvino", "--precision", "bf16", "--out", str(out)])
    assert r.exit_code == 1 and "no native bf16" in r.output and r.output.count("\n") == 1
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("precision,needle", [("fp16", "--backend tensorrt"), ("fp64", "fp64")])
def test_unavailable_precision_is_refused_before_any_work(precision, needle):
    from certseg_rt.export.build import check_request

    with pytest.raises(CertsegError, match=needle):
        check_request("openvino", precision)


def test_openvino_engine_has_no_gpu_provider(openvino_engines):
    with pytest.raises(CertsegError, match="runs on the CPU"):
        _load(openvino_engines["fp32"], provider="cuda")


# ---- the runtime without torch; the CLI verbs ------------------------------------------------------------------

def test_runtime_certifies_without_torch_or_onnxruntime(openvino_engines):
    r = run_without_torch("""
        import sys
        sys.modules["onnxruntime"] = None  # not installed: an OpenVINO deployment needs only openvino
        import numpy as np
        from certseg_rt.runtime.segmenter import CertifiedSegmenter
        seg = CertifiedSegmenter.load(sys.argv[1], batch_size=8)
        x = np.full((1, 128, 128), 0.5, np.float32)
        cert = seg.certify(x, n0=3, n=20, alpha=0.1)
        print(cert.record["backend"], seg.segment(x).shape)
    """, openvino_engines["fp32"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["openvino:cpu", "(128,", "128)"]


def test_cli_certify_and_evaluate_with_an_openvino_engine(openvino_engines, tmp_path):
    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom
    from certseg_rt.io import write_png

    ph = make_phantom(HELD_OUT_SEEDS[1], size=128)
    write_png(tmp_path / "scan.png", (ph.image[0] * 255).round().astype(np.uint8))
    r = CliRunner().invoke(main, ["certify", str(tmp_path / "scan.png"), "--engine", str(openvino_engines["fp32"]),
                                  "--n", "40", "--batch-size", "8", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    cert = json.loads(r.stdout)
    assert cert["backend"] == "openvino:cpu" and cert["precision"] == "fp32" and cert["radius"] > 0
    data = tmp_path / "data"
    assert CliRunner().invoke(main, ["make-phantoms", str(data), "--count", "2"]).exit_code == 0
    r = CliRunner().invoke(main, ["evaluate", str(data), "--engine", str(openvino_engines["fp32"]), "--n0", "3",
                                  "--n", "30", "--tau", "0.6", "--alpha", "0.5", "--batch-size", "8",
                                  "--out", str(tmp_path / "res")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert summary["overall"][0]["images"] == 2 and summary["overall"][0]["certified_dice"] > 0.8
