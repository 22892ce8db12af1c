"""The backend registries: one build module and one run module per backend, dispatch by name, reference runners."""
import inspect

import numpy as np
import pytest

from certseg_rt.errors import CertsegError
from certseg_rt.export.builders import BUILDERS, builder
from certseg_rt.runtime.backends import REFERENCES, RUNNERS, reference, runner

from engine_helpers import copy_engine, edit_manifest

RUNNER_KEYWORDS = {"batch_size", "threads", "provider", "max_memory", "cache_dir", "calls"}


def test_every_builder_has_a_runner_and_both_have_the_uniform_interface():
    assert set(BUILDERS) == set(RUNNERS) == {"onnxruntime", "openvino", "tensorrt"}
    for name in BUILDERS:
        make = builder(name)
        assert callable(make.check_request) and callable(make.build) and make.PRECISIONS
        params = inspect.signature(runner(name).open_engine).parameters
        assert list(params)[:2] == ["engine_dir", "manifest"] and RUNNER_KEYWORDS <= set(params), name
    for name in REFERENCES:
        module = reference(name)
        params = inspect.signature(module.open_model).parameters
        assert list(params)[:2] == ["model_dir", "sigma"], name
        assert {"batch_size", "denoiser", "threads", "precision", "layout", "max_memory"} <= set(params), name
        assert module.PRECISIONS and module.LAYOUTS and callable(module.unavailable)


@pytest.mark.parametrize("backend", sorted(RUNNERS))
def test_load_dispatches_to_the_manifest_s_runner(backend, engine_dir, tmp_path, monkeypatch):
    """CertifiedSegmenter.load opens whichever runner the manifest names, with the caller's options.  The runners'
    open_engine is stood in for (TensorRT needs a GPU); what runs for real is the manifest check and the dispatch."""
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    d = copy_engine(engine_dir, tmp_path / "engine")
    edit_manifest(d, lambda m: m.update(backend=backend))
    calls = []

    class Opened:
        batch_size = 7
        record = {}

    def open_engine(engine_dir, manifest, **options):
        calls.append((engine_dir, manifest["backend"], options))
        return Opened()
    for name in RUNNERS:
        monkeypatch.setattr(runner(name), "open_engine", open_engine if name == backend else None)
    seg = CertifiedSegmenter.load(d, batch_size=8, threads=1, max_memory="1G", cache_dir=tmp_path / "c", calls=(5, 50))
    assert calls == [(d, backend, {"batch_size": 8, "threads": 1, "provider": "cpu", "max_memory": 1 << 30,
                                   "cache_dir": tmp_path / "c", "calls": (5, 50)})]
    assert seg.backend.record["backend"] == f"{backend}:cpu" and seg.backend.record["batch_size"] == 7


def test_unknown_backend_is_one_line_naming_the_known_ones(engine_dir, tmp_path):
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    d = copy_engine(engine_dir, tmp_path / "engine")
    edit_manifest(d, lambda m: m.update(backend="tflite"))
    with pytest.raises(CertsegError, match="onnxruntime, openvino, tensorrt"):
        CertifiedSegmenter.load(d)
    with pytest.raises(CertsegError, match="--backend must be one of"):
        builder("tflite")
    with pytest.raises(CertsegError, match="torch-eager"):
        reference("torch-jit")


def test_real_engines_dispatch_to_their_libraries(engine_dir, openvino_engines):
    from certseg_rt.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from certseg_rt.runtime.backends.openvino import OpenVinoBackend
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    assert isinstance(CertifiedSegmenter.load(engine_dir).backend, OnnxRuntimeBackend)
    assert isinstance(CertifiedSegmenter.load(openvino_engines["fp32"]).backend, OpenVinoBackend)


def test_reference_runner_opens_a_model_directory_with_its_precision_and_layout(chest_dir, phantom):
    pytest.importorskip("torch")
    from certseg_rt.runtime.backends import open_model

    nchw = open_model(chest_dir, 0.25, batch_size=8)
    nhwc = open_model(chest_dir, 0.25, batch_size=8, layout="channels_last")
    assert nchw.record["layout"] == "nchw" and nhwc.record["layout"] == "channels_last"
    assert nhwc.record["precision"] == "fp32" and nhwc.batch_size == 8
    a = nchw.sample_counts(phantom.image, 16, seed=2, offset=0)
    b = nhwc.sample_counts(phantom.image, 16, seed=2, offset=0)
    assert a.sum() == b.sum() and np.abs(a - b).sum() / a.sum() < 1e-3  # same model up to summation order
    with pytest.raises(ValueError, match="layout"):
        open_model(chest_dir, 0.25, layout="nhwc")
