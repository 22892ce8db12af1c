"""TensorRT: the fp16/bf16 cast pass, the build plan and its refusal rules, engine checks against the manifest.

Runs here (CPU, no tensorrt): the cast pass on the bundled fused graph under ONNX Runtime CPU, the pure
planning and compatibility rules, and the engine-directory checks that come before TensorRT is touched.
Where the tensorrt module itself is needed and cannot exist on this machine, a stand-in module with only
the attributes the code under test uses is passed in explicitly; each such test says so.

GPU tests (``-m gpu``) build a real fp16 engine of the bundled model and run it; they are skipped, with
the reason, when tensorrt is not importable or no CUDA device is visible.
"""
import enum
import importlib.util
import json
import types

import numpy as np
import pytest

from certseg_rt.errors import CertsegError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from onnx import TensorProto, helper, shape_inference  # noqa: E402

from certseg_rt.export.precision import cast_precision, precision_summary  # noqa: E402
from certseg_rt.export.builders.tensorrt import (  # noqa: E402
    MIN_AGREEMENT, TIMING_CACHE_NAME, check_agreement, check_build_target, plan_tensorrt_build)
from certseg_rt.runtime.backends.tensorrt import (  # noqa: E402
    ENGINE_NAME, check_engine_compatible, deserialize_engine, open_tensorrt_backend)

SIGMA = 0.25


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, chest_dir):
    """The bundled model's exported graphs (fused model.onnx, segmenter, denoiser), once per module."""
    from certseg_rt.export.loaders import load_model_dir
    from certseg_rt.export.onnx_export import export_onnx, parity_inputs

    source = load_model_dir(chest_dir)
    g = export_onnx(source, SIGMA, tmp_path_factory.mktemp("graphs"), parity=False)
    g.noisy = parity_inputs(source, SIGMA, 8)  # noisy held-out phantoms, keyed noise
    g.source = source
    return g


@pytest.fixture(scope="module")
def fp32_model(graphs):
    return onnx.load(str(graphs.fused))


@pytest.fixture(scope="module")
def fp16_model(fp32_model):
    return cast_precision(fp32_model, "fp16")


def _types(model) -> dict:
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    out = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    out.update({t.name: t.data_type for t in g.initializer})
    return out


def _run(model, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


# ---- the cast pass -----------------------------------------------------------------------------------------

def test_fp16_graph_agrees_with_fp32_under_onnxruntime(fp32_model, fp16_model, graphs):
    ref = _run(fp32_model, graphs.noisy)[0]
    got = _run(fp16_model, graphs.noisy)[0]
    assert got.dtype == ref.dtype == np.uint8 and got.shape == ref.shape == (8, 128, 128)
    assert np.mean(got == ref) >= 0.99


def test_fp16_graph_keeps_normalisation_and_timestep_embedding_in_fp32(fp16_model):
    t = _types(fp16_model)
    g = fp16_model.graph
    norms = [n for n in g.node if n.op_type == "InstanceNormalization"]
    assert len(norms) == 29
    for n in norms:
        assert all(t[v] == TensorProto.FLOAT for v in [*n.input, *n.output]), n.name
    for n in g.node:
        if n.op_type in ("Sin", "Cos"):
            assert all(t[v] == TensorProto.FLOAT for v in [*n.input, *n.output]), n.name
    convs = [n for n in g.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs and all(t[n.input[1]] == TensorProto.FLOAT16 and t[n.output[0]] == TensorProto.FLOAT16 for n in convs)
    # The interface does not change: float32 noisy input, uint8 labels.
    assert [(i.name, i.type.tensor_type.elem_type) for i in g.input] == [("x_noisy", TensorProto.FLOAT)]
    assert [(o.name, o.type.tensor_type.elem_type) for o in g.output] == [("labels", TensorProto.UINT8)]
    summary = precision_summary(fp16_model)
    assert summary["precision"] == "fp16" and summary["fp32_ops"]["InstanceNormalization"] == 29
    assert summary["constants_clipped"] == 0 and summary["casts_inserted"] > 0
    onnx.checker.check_model(fp16_model, full_check=True)


def test_bf16_graph_is_opset_22_and_checks(fp32_model):
    model = cast_precision(fp32_model, "bf16")
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 22
    t = _types(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(t[n.input[1]] == TensorProto.BFLOAT16 for n in convs)
    assert all(t[v] == TensorProto.FLOAT for n in model.graph.node if n.op_type == "InstanceNormalization"
               for v in [*n.input, *n.output])


def _small_model():
    """x -> Mul(c) -> Softmax -> ReduceMean -> Add(c) -> y, Pow(x, c) -> Resize(scales) -> r, x -> Cast -> i."""
    c = helper.make_tensor("c", TensorProto.FLOAT, [1], [1.5])
    big = helper.make_tensor("big", TensorProto.FLOAT, [1], [1e6])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    nodes = [
        helper.make_node("Mul", ["x", "c"], ["m"]),
        helper.make_node("Softmax", ["m"], ["s"], axis=-1),
        helper.make_node("ReduceMean", ["s"], ["r"], axes=[-1], keepdims=1),
        helper.make_node("Add", ["r", "c"], ["y"]),
        helper.make_node("Pow", ["x", "c"], ["p"]),
        helper.make_node("Min", ["p", "big"], ["pm"]),
        helper.make_node("Resize", ["pm", "", "scales"], ["z"], mode="nearest"),
        helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 1]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3, 8, 8]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [2, 3, 4, 4])],
        initializer=[c, big, scales])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_cast_pass_rules_on_a_small_graph():
    model = _small_model()
    cast = cast_precision(model, "fp16")
    t = _types(cast)
    by_op = {n.op_type: n for n in cast.graph.node if not n.name.endswith(("fp16", "fp32"))}
    assert t[by_op["Softmax"].output[0]] == t[by_op["ReduceMean"].output[0]] == TensorProto.FLOAT
    assert t[by_op["Pow"].output[0]] == TensorProto.FLOAT and t[by_op["Mul"].output[0]] == TensorProto.FLOAT16
    # "c" feeds both reduced (Mul, Add) and fp32 (Pow) nodes: kept as it is, plus a reduced copy.
    inits = {i.name: i.data_type for i in cast.graph.initializer}
    assert inits["c"] == TensorProto.FLOAT and inits["c__fp16"] == TensorProto.FLOAT16
    assert inits["big"] == TensorProto.FLOAT16 and precision_summary(cast)["constants_clipped"] == 1
    assert inits["scales"] == TensorProto.FLOAT  # Resize's scales are tensor(float) in its schema: left as they are
    # Float outputs come back as float32 under their own names; the int output is untouched.
    assert [(o.name, o.type.tensor_type.elem_type) for o in cast.graph.output] == [
        ("y", TensorProto.FLOAT), ("z", TensorProto.FLOAT), ("i", TensorProto.INT64)]
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    (y0, z0, i0), (y1, z1, i1) = _run(model, x), _run(cast, x)
    assert y1.dtype == z1.dtype == np.float32 and np.array_equal(i0, i1)  # the int Cast sees float32 x
    np.testing.assert_allclose(y1, y0, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(z1, z0, rtol=2e-3, atol=2e-3)


def test_cast_pass_refuses_unknown_precision(fp32_model):
    with pytest.raises(CertsegError, match="fp16, bf16"):
        cast_precision(fp32_model, "int8")


# ---- the build plan and its refusal rules (pure) ------------------------------------------------------------

def test_plan_names_files_shapes_and_manifest_fields(tmp_path):
    plan = plan_tensorrt_build(tmp_path / "model.onnx", tmp_path / ENGINE_NAME, precision="fp16",
                               batch_sizes=(1, 8, 32), input_shape=(1, 128, 128), workspace_bytes=256 << 20,
                               timing_cache_path=tmp_path / "old" / TIMING_CACHE_NAME)
    assert plan.network_onnx_path == tmp_path / "model.fp16.onnx" and plan.needs_cast
    assert plan.timing_cache_out == tmp_path / "timing.cache"
    assert plan.timing_cache_in == tmp_path / "old" / "timing.cache"
    assert plan.profile == {"input": "x_noisy", "min": [1, 1, 128, 128], "opt": [8, 1, 128, 128],
                            "max": [32, 1, 128, 128]}
    fields = plan.manifest_fields(tensorrt_version="10.13.0.35", gpu="NVIDIA A10", compute_capability="8.6")
    assert fields == {"tensorrt": "10.13.0.35", "gpu": "NVIDIA A10", "compute_capability": "8.6",
                      "precision": "fp16", "version_compatible": False, "hardware_compatible": False,
                      "hardware_compatibility_level": "NONE", "workspace_bytes": 256 << 20, "profile": plan.profile,
                      "engine": "model.engine", "timing_cache": "timing.cache", "tensorrt_onnx": "model.fp16.onnx"}
    json.dumps(fields)  # goes into manifest.json as it is
    fp32 = plan_tensorrt_build(tmp_path / "model.onnx", tmp_path / ENGINE_NAME, precision="fp32",
                               input_shape=(1, 64, 64), hardware_compatible=True, version_compatible=True)
    assert fp32.network_onnx_path == tmp_path / "model.onnx" and not fp32.needs_cast
    f = fp32.manifest_fields(tensorrt_version="11.4.0.106", gpu="g", compute_capability="9.0")
    assert f["hardware_compatibility_level"] == "AMPERE_PLUS" and f["version_compatible"] is True


@pytest.mark.parametrize("kwargs, needle", [
    ({"precision": "int8"}, "--precision must be one of fp32, fp16, bf16"),
    ({"batch_sizes": (4, 2, 8)}, "1 <= MIN <= OPT <= MAX"),
    ({"batch_sizes": (0, 1, 1)}, "1 <= MIN <= OPT <= MAX"),
    ({"batch_sizes": "a,b"}, "three integers"),
    ({"workspace_bytes": 1000}, "--workspace must be at least 1 MiB"),
    ({"input_shape": (128, 128)}, "(C, H, W)"),
])
def test_plan_refuses_bad_options(tmp_path, kwargs, needle):
    args = {"input_shape": (1, 128, 128), **kwargs}
    with pytest.raises(CertsegError) as e:
        plan_tensorrt_build(tmp_path / "model.onnx", tmp_path / ENGINE_NAME, **args)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_build_target_rules(tmp_path):
    plan = lambda **k: plan_tensorrt_build(tmp_path / "m.onnx", tmp_path / ENGINE_NAME, input_shape=(1, 8, 8), **k)
    check_build_target(plan(precision="fp16"), "7.5")
    check_build_target(plan(precision="bf16", hardware_compatible=True), "8.0")
    with pytest.raises(CertsegError, match="bf16 kernels need.*compute capability >= 8.0.*has 7.5"):
        check_build_target(plan(precision="bf16"), "7.5", "Tesla T4")
    with pytest.raises(CertsegError, match="hardware compatibility"):
        check_build_target(plan(hardware_compatible=True), "7.5")


def test_agreement_rule():
    logged = []
    assert check_agreement(0.995, precision="fp16", count=16, log=logged.append) is False
    with pytest.raises(CertsegError, match=r"only 98\.00% of the pixels of 16 noisy phantoms \(need 99%\).*--force"):
        check_agreement(0.98, precision="fp16", count=16)
    assert check_agreement(0.98, precision="fp16", count=16, force=True, log=logged.append) is True
    assert len(logged) == 1 and "--force" in logged[0]
    assert MIN_AGREEMENT == 0.99


# ---- the engine against the manifest (pure rules, then the loader) ------------------------------------------

BUILT = {"tensorrt": "10.13.0.35", "gpu": "NVIDIA A10", "compute_capability": "8.6",
         "version_compatible": False, "hardware_compatible": False}


@pytest.mark.parametrize("manifest, here, cc, needle", [
    ({}, "10.13.0.35", "8.6", None),
    ({}, "10.13.0.35", "8.9", "built for compute capability 8.6 (NVIDIA A10"),
    ({}, "10.14.1.48", "8.6", "built by TensorRT 10.13.0.35 (manifest field tensorrt) and this is TensorRT 10.14.1.48"),
    ({"version_compatible": True}, "11.4.0.106", "8.6", None),
    ({"version_compatible": True}, "10.8.0.43", "8.6", "version-compatible by TensorRT 10.13.0.35"),
    ({"hardware_compatible": True}, "10.13.0.35", "9.0", None),
    ({"hardware_compatible": True}, "10.13.0.35", "7.5", "compute capability >= 8.0"),
    ({"tensorrt": None}, "10.13.0.35", "8.6", "lacks field tensorrt"),
    ({"compute_capability": ""}, "10.13.0.35", "8.6", "lacks field compute_capability"),
])
def test_engine_compatibility_rules(manifest, here, cc, needle):
    m = {**BUILT, **manifest}
    if needle is None:
        check_engine_compatible(m, here, cc)
        return
    with pytest.raises(CertsegError) as e:
        check_engine_compatible(m, here, cc, gpu="this A40", engine_dir="engines/chest")
    message = str(e.value)
    assert needle in message and "\n" not in message
    assert "`certseg-rt build-engine --backend tensorrt --out engines/chest`" in message


class _Severity(enum.IntEnum):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)


def _stand_in_tensorrt(version="10.13.0.35"):
    """A stand-in for the tensorrt module (it cannot be installed on this CPU-only machine): a Runtime whose
    deserialize_cuda_engine logs TensorRT's error and returns None, as the real one does for a bad plan."""
    runtimes = []

    class ILogger:
        Severity = _Severity

        def __init__(self):
            pass

    class Runtime:
        def __init__(self, logger):
            self.logger, self.engine_host_code_allowed = logger, False
            runtimes.append(self)

        def deserialize_cuda_engine(self, data):
            self.logger.log(_Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                             "(Serialization assertion magicTagRead == kMAGIC_TAG failed.)")
            return None

    return types.SimpleNamespace(__version__=version, ILogger=ILogger, Runtime=Runtime, runtimes=runtimes)


@pytest.mark.parametrize("version_compatible", [False, True])
def test_deserialization_failure_is_one_clear_line(tmp_path, version_compatible):
    """Uses a stand-in tensorrt module (no TensorRT on this machine) whose runtime returns None."""
    engine = tmp_path / ENGINE_NAME
    engine.write_bytes(b"ftrt" + bytes(100))
    trt = _stand_in_tensorrt()
    with pytest.raises(CertsegError) as e:
        deserialize_engine(engine, {**BUILT, "version_compatible": version_compatible}, trt=trt,
                           compute_capability="8.6", engine_dir=tmp_path)
    message = str(e.value)
    assert message.startswith("TensorRT 10.13.0.35 could not deserialize model.engine: IRuntime::deserializeCudaEngine")
    assert "build-engine --backend tensorrt" in message and "\n" not in message
    assert trt.runtimes[0].engine_host_code_allowed is version_compatible  # version-compatible plans embed code
    # The manifest is checked first: an engine from another TensorRT is never handed to the parser.
    other = _stand_in_tensorrt("10.14.1.48")
    with pytest.raises(CertsegError, match="built by TensorRT 10.13.0.35"):
        deserialize_engine(engine, BUILT, trt=other, compute_capability="8.6")
    assert other.runtimes == []


def _fake_engine_dir(tmp_path):
    """An engine directory as build-engine --backend tensorrt writes it, with stand-in engine bytes."""
    from certseg_rt.manifest import write_manifest

    d = tmp_path / "trt"
    d.mkdir()
    (d / ENGINE_NAME).write_bytes(b"ftrt" + bytes(range(256)) * 8)
    (d / TIMING_CACHE_NAME).write_bytes(b"cache")
    write_manifest(d, {"backend": "tensorrt", "sigma": SIGMA, "classes": ["bg", "a", "b", "c"],
                       "input": {"channels": 1, "height": 128, "width": 128},
                       "batch_sizes": {"min": 1, "opt": 8, "max": 32}, "tools": {}, **BUILT, "precision": "fp16",
                       "engine": ENGINE_NAME})
    return d


def test_truncated_engine_is_refused_by_its_hash_before_tensorrt_is_touched(tmp_path, monkeypatch):
    d = _fake_engine_dir(tmp_path)
    data = (d / ENGINE_NAME).read_bytes()
    (d / ENGINE_NAME).write_bytes(data[: len(data) // 2])
    import certseg_rt.runtime.backends.tensorrt as backend

    def no_tensorrt():
        raise AssertionError("tensorrt was imported before the engine file's hash was checked")

    monkeypatch.setattr(backend, "import_tensorrt", no_tensorrt)
    with pytest.raises(CertsegError, match=r"engine file model\.engine changed since it was built \(sha256 mismatch "
                                           r"in field files\.model\.engine\)"):
        open_tensorrt_backend(d)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_engine_directory_without_tensorrt_is_one_line(tmp_path):
    with pytest.raises(CertsegError) as e:
        open_tensorrt_backend(_fake_engine_dir(tmp_path))
    assert "tensorrt package" in str(e.value) and "\n" not in str(e.value)


def test_onnxruntime_engine_is_not_opened_as_tensorrt(tmp_path):
    d = _fake_engine_dir(tmp_path)
    from certseg_rt.manifest import load_manifest

    m = load_manifest(d)
    m["backend"] = "onnxruntime"
    with pytest.raises(CertsegError, match="not 'tensorrt'"):
        open_tensorrt_backend(d, m)


def _device_visible() -> bool:
    from certseg_rt._ext_loader import EXTENSION_STATUS, ext

    return EXTENSION_STATUS["cuda"] and ext.cuda_device_count() > 0


def _gpu_reason():
    from certseg_rt._ext_loader import EXTENSION_STATUS

    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not importable"
    if not EXTENSION_STATUS["cuda"]:
        return "certseg-rt was built without its CUDA kernels"
    return None if _device_visible() else "no CUDA device is visible"


GPU_REASON = _gpu_reason()


def gpu_test(fn):
    """Marked gpu, and skipped with the reason when tensorrt or a CUDA device is missing."""
    return pytest.mark.gpu(pytest.mark.skipif(GPU_REASON is not None, reason=f"GPU test: {GPU_REASON}")(fn))


@pytest.mark.skipif(_device_visible(), reason="a CUDA device is visible")
def test_device_backends_need_a_gpu():
    from certseg_rt.runtime.backends.tensorrt import require_device_kernels

    with pytest.raises(CertsegError) as e:
        require_device_kernels()
    assert ("CUDA" in str(e.value) or "GPU" in str(e.value)) and "\n" not in str(e.value)


# ---- GPU: real engines ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trt_engine_dir(graphs, tmp_path_factory):
    """An fp16 engine directory of the bundled model, built as build-engine --backend tensorrt builds one."""
    import shutil

    from certseg_rt.export.builders.tensorrt import build_tensorrt_stage
    from certseg_rt.manifest import write_manifest

    d = tmp_path_factory.mktemp("trt") / "chest"
    d.mkdir()
    for p in (graphs.fused, graphs.segmenter, graphs.denoiser):
        shutil.copyfile(p, d / p.name)
    meta = graphs.metadata
    fields = build_tensorrt_stage(d / "model.onnx", d, inputs=graphs.noisy, precision="fp16", batch_sizes=(1, 8, 32),
                                  input_shape=(1, 128, 128), log=lambda *_: None)
    write_manifest(d, {"backend": "tensorrt", "sigma": SIGMA, "classes": meta["classes"], "input": meta["input"],
                       "batch_sizes": {"min": 1, "opt": 8, "max": 32},
                       "denoiser": {"timestep": meta["timestep"], "alpha_bar": meta["alpha_bar"]},
                       "graphs": {"fused": "model.onnx", "segmenter": "segmenter.onnx"}, "tools": {}, **fields})
    return d


def _cpu_backend(graphs, batch_size=8):
    from certseg_rt.runtime.backends.onnxruntime import OnnxRuntimeBackend, make_session

    return OnnxRuntimeBackend(make_session(graphs.fused), sigma=SIGMA, num_classes=4, channels=1, height=128,
                              width=128, batch_size=batch_size)


@gpu_test
def test_gpu_fp16_engine_certifies_like_onnxruntime_fp32(trt_engine_dir, graphs, phantom):
    from certseg_rt.certify import certify
    from certseg_rt.manifest import load_manifest

    m = load_manifest(trt_engine_dir)
    assert m["agreement_with_onnxruntime_fp32"]["label_agreement"] >= 0.99 and m["precision"] == "fp16"
    assert (trt_engine_dir / "model.fp16.onnx").is_file() and (trt_engine_dir / TIMING_CACHE_NAME).is_file()
    with open_tensorrt_backend(trt_engine_dir) as backend:
        assert backend.record["cuda_graph"] == "on"
        a = certify(backend, phantom.image, n0=10, n=100, seed=3)
    b = certify(_cpu_backend(graphs), phantom.image, n0=10, n=100, seed=3)
    assert np.mean(a.labels == b.labels) >= 0.99


@gpu_test
def test_gpu_cuda_graph_replay_equals_uncaptured_execution(trt_engine_dir, phantom):
    with open_tensorrt_backend(trt_engine_dir, cuda_graph=True) as graph, \
            open_tensorrt_backend(trt_engine_dir, cuda_graph=False) as plain:
        for num, offset in ((8, 0), (37, 5), (100, 1000)):  # full batches, and a partial last one
            assert np.array_equal(graph.sample_counts(phantom.image, num, 11, offset),
                                  plain.sample_counts(phantom.image, num, 11, offset))


@gpu_test
def test_gpu_device_counts_equal_cpu_noise_and_votes(trt_engine_dir, graphs, phantom):
    """Device loop (GPU noise, engine, GPU votes) == host loop (CPU noise, same engine, CPU votes), exactly;
    and close to ONNX Runtime fp32 on the CPU (fp16 flips a few labels)."""
    with open_tensorrt_backend(trt_engine_dir) as backend:
        device = backend.sample_counts(phantom.image, 45, 7, 3)
        host = backend.host_sample_counts(phantom.image, 45, 7, 3)
    assert device.dtype == np.int32 and device.sum() == 45 * 128 * 128
    assert np.array_equal(device, host)
    cpu = _cpu_backend(graphs).sample_counts(phantom.image, 45, 7, 3)
    assert np.abs(device - cpu).sum() / cpu.sum() < 0.02


@gpu_test
def test_gpu_onnxruntime_cuda_on_device_memory(graphs, phantom):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("GPU test: onnxruntime here has no CUDAExecutionProvider")
    from certseg_rt.runtime.backends.onnxruntime_device import OnnxRuntimeDeviceBackend

    backend = OnnxRuntimeDeviceBackend(graphs.fused, provider="cuda", sigma=SIGMA, num_classes=4, channels=1,
                                       height=128, width=128, batch_size=8)
    try:
        device = backend.sample_counts(phantom.image, 21, 5, 0)
    finally:
        backend.close()
    cpu = _cpu_backend(graphs).sample_counts(phantom.image, 21, 5, 0)
    assert device.sum() == cpu.sum() and np.abs(device - cpu).sum() / cpu.sum() < 1e-3


# ---- bench: TensorRT rows ----------------------------------------------------------------------------------------

def _fake_rows(monkeypatch, unavailable):
    """Stand-ins, because no GPU or tensorrt exists here: the TensorRT check, every engine build and every timed
    row (each row's time depends on its backend so that the summary has a fastest one).  What runs for real is
    bench's plan: which engines it builds and which rows and summary it reports."""
    from certseg_rt import bench
    import certseg_rt.bench.rows as rows
    import certseg_rt.bench.suite as suite
    import certseg_rt.export.build as build
    import certseg_rt.export.loaders as loaders
    from certseg_rt.errors import CertsegError

    built = []
    real_check = build.check_request

    def check_request(backend, precision, options=None):
        if backend == "tensorrt" and unavailable:
            raise CertsegError(unavailable)
        if backend != "tensorrt":
            real_check(backend, precision, options)
    monkeypatch.setattr(build, "check_request", check_request)
    monkeypatch.setattr(rows, "gflop_per_sample", lambda model, size: 1.0)
    monkeypatch.setattr(loaders, "load_source", lambda model, image_size: image_size)
    monkeypatch.setattr(build, "build_engine", lambda source, sigma, path, *, backend, precision, batch_sizes, log:
                        built.append((source, backend, precision, path.name)))
    seconds = {"torch-eager": 3.0, "onnxruntime": 1.5, "openvino": 1.2, "tensorrt": 0.1}
    monkeypatch.setattr(suite, "row_in_subprocess", lambda spec: {
        "kind": spec["kind"], "backend": spec["backend"], "precision": spec["precision"], "layout": spec.get("layout"),
        "image_size": spec["image_size"], "n0": spec["n0"], "n": spec["n"], "batch_size": spec["batch_size"],
        "engine": spec.get("engine"), "seconds_median": seconds[spec["backend"]] + (spec["precision"] == "fp32") * 0.05,
        "samples_per_second": 1.0, "peak_rss_mb": 1.0, "certified_dice": 0.9, "gflops_per_second": 100.0})
    return bench, built


def test_bench_builds_and_reports_tensorrt_rows_when_a_gpu_is_present(monkeypatch):
    bench, built = _fake_rows(monkeypatch, unavailable=None)
    result = bench.run(sizes=(64,), ns=(100,), batch_sizes=(16,), engines=["onnxruntime:fp32", "tensorrt:fp32",
                       "tensorrt:fp16"], references=["torch-eager:fp32"], reference_loop=False, log=lambda m: None)
    assert [(b, p) for _, b, p, _ in built] == [("onnxruntime", "fp32"), ("tensorrt", "fp32"), ("tensorrt", "fp16")]
    assert all(size == (64, 64) for size, *_ in built)
    trt = [r for r in result["rows"] if r["backend"] == "tensorrt"]
    assert [r["precision"] for r in trt] == ["fp32", "fp16"]
    assert all(r["engine"].endswith(f"engine-64-tensorrt-{r['precision']}") for r in trt)
    assert all(r["fraction_of_peak"] is None for r in trt)  # the peak is the CPU's
    assert all(r["fraction_of_peak"] is not None for r in result["rows"] if r["backend"] != "tensorrt")
    summary = result["summary"]["64x64 n=100"]
    assert summary["fastest"] == "onnxruntime:fp32"  # the CPU goal is about the CPU path
    assert summary["fastest_gpu"] == "tensorrt:fp16" and summary["gpu_seconds"] == 0.1
    assert result["skipped"] == {}
    assert "GPU: tensorrt:fp16 0.1000 s" in bench.to_markdown(result)  # GPU times to 0.1 ms


def test_bench_quick_builds_tensorrt_fp16_only(monkeypatch):
    bench, built = _fake_rows(monkeypatch, unavailable=None)
    bench.run(sizes=(64,), ns=(100,), batch_sizes=(16,), engines=None, references=["torch-eager:fp32"],
              reference_loop=False, quick=True, log=lambda m: None)
    assert [p for _, b, p, _ in built if b == "tensorrt"] == ["fp16"]


def test_bench_says_why_there_are_no_tensorrt_rows(monkeypatch):
    bench, built = _fake_rows(monkeypatch, unavailable="the TensorRT backend needs an NVIDIA GPU")
    result = bench.run(sizes=(64,), ns=(100,), batch_sizes=(16,), engines=["onnxruntime:fp32", "tensorrt:fp16"],
                       references=["torch-eager:fp32"], reference_loop=False, log=lambda m: None)
    assert [b for _, b, _, _ in built] == ["onnxruntime"]
    assert {r["backend"] for r in result["rows"]} == {"torch-eager", "onnxruntime"}
    assert result["skipped"] == {"tensorrt:fp16": "the TensorRT backend needs an NVIDIA GPU"}
    assert "- no tensorrt:fp16 rows: the TensorRT backend needs an NVIDIA GPU" in bench.to_markdown(result)


def test_bench_here_names_what_is_missing_for_tensorrt():
    from certseg_rt.bench.suite import unavailable_engines

    reason = unavailable_engines([("tensorrt", "fp16")])[1].get("tensorrt:fp16")
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt" in reason and "pip install" in reason
    else:
        assert reason is None or "GPU" in reason or "CUDA" in reason or "cuda" in reason


@gpu_test
def test_gpu_bench_times_a_tensorrt_engine():
    from certseg_rt.bench import run

    result = run(sizes=(128,), ns=(100,), batch_sizes=(16,), engines=["onnxruntime:fp32", "tensorrt:fp16"],
                 references=["torch-eager:fp32"], reference_loop=False, repeats=1, log=lambda m: None)
    (row,) = [r for r in result["rows"] if r["backend"] == "tensorrt"]
    assert row["precision"] == "fp16" and row["certified_dice"] > 0.9
    assert result["summary"]["128x128 n=100"]["fastest_gpu"] == "tensorrt:fp16"
