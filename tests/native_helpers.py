"""Helpers of the native-runtime tests and benchmark: build cpp_ext/ with the runtime, make OpenVINO engine
directories, and certify in Python with OpenVINO.

Two of them stand in for issue 14's work until it lands on this branch (each says so): ``openvino_engine`` for
``certseg-rt build-engine --backend openvino`` and ``python_certificate`` for the Python runtime's OpenVINO runner
(``CertifiedSegmenter.load(engine).certify(...)`` + the CLI's summary).  Both follow the engine-directory contract
of issue 14 (README, "Embedding in C and C++").
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CPP_EXT = Path(__file__).resolve().parents[1] / "cpp_ext"


def missing_build_tools() -> str | None:
    """Why the native runtime cannot be built here, or None."""
    if not sys.platform.startswith("linux"):
        return "the native runtime tests run on Linux only"
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler on PATH"
    for header, package in (("/usr/include/png.h", "libpng-dev"), ("/usr/include/openssl/sha.h", "libssl-dev")):
        if not Path(header).exists():
            return f"{header} is missing (apt-get install {package})"
    try:
        import nlohmann_json  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed (pip install 'certseg-rt[native]')"
    return None


def build_native(build_dir: Path, *, tests: bool = True, build_type: str = "Release") -> dict:
    """Configure and build cpp_ext/ with the runtime into build_dir; returns the programs' paths and the seconds taken."""
    configure = ["cmake", "-S", str(CPP_EXT), "-B", str(build_dir), "-DCERTSEG_BUILD_RUNTIME=ON",
                 "-DCERTSEG_BUILD_PYTHON=OFF", "-DCERTSEG_CUDA=OFF", "-DCERTSEG_BUILD_EXAMPLES=OFF",
                 "-DCERTSEG_BUILD_SHARED=ON", f"-DCMAKE_BUILD_TYPE={build_type}",
                 f"-DCERTSEG_BUILD_RUNTIME_TESTS={'ON' if tests else 'OFF'}", f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    start = time.perf_counter()
    for command in (configure, ["cmake", "--build", str(build_dir), "--parallel", str(min(4, os.cpu_count() or 1))]):
        result = subprocess.run(command, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    out = build_dir / "runtime"
    return {"certseg_run": out / "certseg-run", "example": out / "certify_image", "soak": out / "runtime_soak",
            "library": out / "libcertseg_runtime.so", "kernels": build_dir / "libcertseg.so", "seconds": time.perf_counter() - start}


# Built once per test session, whichever test module asks first (pytest's session fixtures are per defining module).
_SESSION: dict = {}


def session_build(tmp_path_factory) -> dict:
    if "build" not in _SESSION:
        _SESSION["build"] = build_native(tmp_path_factory.mktemp("certseg_native"))
    return _SESSION["build"]


def session_openvino_engines(onnx_engine: Path, tmp_path_factory) -> dict:
    """fp32 (and, where the CPU has native bf16, bf16) OpenVINO engines of an ONNX Runtime engine's model."""
    if "engines" not in _SESSION:
        root = tmp_path_factory.mktemp("ov_engines")
        precisions = ["fp32"] + (["bf16"] if cpu_has_bf16() else [])
        _SESSION["engines"] = {p: openvino_engine(onnx_engine, root / p, p) for p in precisions}
    return _SESSION["engines"]


def run(program, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *map(str, args)], check=False, capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The message of a failed certseg-run: exit 1, nothing on stdout, exactly one line on stderr."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0][len("Error: "):]


def cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def openvino_engine(onnx_engine: Path, out: Path, precision: str = "fp32", threads: int = 2) -> Path:
    """An OpenVINO engine directory (issue 14's contract) made from an ONNX Runtime engine directory.

    Stand-in for `certseg-rt build-engine --backend openvino --precision PRECISION` until issue 14 lands: the lead
    swaps this body for that CLI call when merging.  The fused and segmenter ONNX graphs are converted with
    openvino.convert_model and saved with compress_to_fp16=False; the manifest records the OpenVINO fields the
    contract names, with the executed precision read back from a compiled model.
    """
    import json

    import openvino as ov

    from certseg_rt.manifest import write_manifest

    if precision not in INFERENCE_PRECISION:
        raise ValueError(f"precision must be one of {', '.join(INFERENCE_PRECISION)}")
    src = json.loads((Path(onnx_engine) / "manifest.json").read_text())
    out.mkdir(parents=True)
    for onnx in Path(onnx_engine).glob("*.onnx"):  # "the ONNX graphs may stay beside them for the record"
        shutil.copy2(onnx, out / onnx.name)
    for name in ("fused", "segmenter"):
        model = ov.convert_model(str(Path(onnx_engine) / src["graphs"][name]))
        ov.save_model(model, str(out / ("model.xml" if name == "fused" else "segmenter.xml")), compress_to_fp16=False)
    core = ov.Core()
    hint = INFERENCE_PRECISION[precision]
    compiled = core.compile_model(str(out / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                                  "PERFORMANCE_HINT": "LATENCY",
                                                                  "INFERENCE_NUM_THREADS": threads})
    version = ov.get_version()
    keep = {k: src[k] for k in ("sigma", "denoiser", "classes", "modality", "input", "batch_sizes", "exporter",
                                "source_model_files", "intake") if k in src}
    write_manifest(out, {
        "backend": "openvino", "precision": precision, **keep,
        "graphs": {"fused": "model.xml", "segmenter": "segmenter.xml"},
        "openvino": {"version": version, "inference_precision": hint,
                     "executed_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                     "cpu_isa": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")), "threads": threads,
                     "performance_hint": "LATENCY"},
        "tools": {**src["tools"], "openvino": version},
    })
    return out


class PythonOpenVino:
    """The Python runtime's OpenVINO runner as the contract describes it: the fused IR compiled once with the
    manifest's INFERENCE_PRECISION_HINT, LATENCY and threads, batch range from the manifest, the sampling loop
    of runtime/sampling.py (compiled kernels' noise and votes) around it.

    Stand-in for runtime/backends/openvino.py until issue 14 lands: the lead replaces its use by
    ``CertifiedSegmenter.load(engine)``.
    """

    def __init__(self, engine_dir: Path, batch_size: int | None = None, threads: int | None = None):
        import openvino as ov

        from certseg_rt.manifest import load_manifest

        self.engine_dir = Path(engine_dir)
        self.manifest = m = load_manifest(engine_dir)
        inp, sizes = m["input"], m["batch_sizes"]
        model = ov.Core().read_model(str(self.engine_dir / m["graphs"]["fused"]))
        model.reshape([ov.Dimension(sizes["min"], sizes["max"]), inp["channels"], inp["height"], inp["width"]])
        self.compiled = ov.Core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": m["openvino"]["inference_precision"], "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads or m["openvino"]["threads"]})
        self.request = self.compiled.create_infer_request()
        self.batch_size = batch_size or sizes["opt"]
        self.sigma = float(m["sigma"])
        self.num_classes = len(m["classes"])
        self.channels = inp["channels"]
        self.name = "openvino"
        self.record = {"backend": "openvino"}

    def sample_counts(self, x, num, seed, offset):
        import openvino as ov

        from certseg_rt.runtime.sampling import _kernels, check_input

        x = check_input(x, self.channels)
        counts = np.zeros((self.num_classes, *x.shape[1:]), np.int32)
        noisy = np.empty((self.batch_size, *x.shape), np.float32)
        for start in range(0, num, self.batch_size):
            b = min(self.batch_size, num - start)
            _kernels.fill_noisy(x, self.sigma, seed, offset + start, noisy[:b])
            self.request.set_input_tensor(ov.Tensor(noisy[:b], shared_memory=True))
            self.request.infer()
            _kernels.accumulate_votes(self.request.get_output_tensor().data, counts)
        return counts


def python_certificate(backend: PythonOpenVino, image_path: Path, *, n0=10, n=100, tau=0.75, alpha=0.001, seed=0,
                       correction="holm", out: Path | None = None) -> tuple[dict, np.ndarray]:
    """(summary, labels) as `certseg-rt certify IMAGE --engine DIR --json [--out]` gives them for an OpenVINO engine.

    Stand-in until issue 14 lands: the lead replaces the body by CertifiedSegmenter.load(engine).certify(...) (or
    the CLI itself).  The record is the one CertifiedSegmenter gives every backend; the rest is cli/certify_verbs.py.
    """
    from certseg_rt import __version__
    from certseg_rt.certify import certify
    from certseg_rt.io import read_image, write_mask
    from certseg_rt.manifest import sha256_file
    from certseg_rt.resize import fit_to_model

    m = backend.manifest
    adapter = m.get("adapter")
    x = read_image(image_path, adapter["image_channels"] if adapter else backend.channels)
    fit = fit_to_model(x, (m["input"]["height"], m["input"]["width"]))
    assert not fit.resized, "the native runtime refuses images of another size; give the engine's size"
    model_x = np.repeat(x, adapter["channels"], axis=0) if adapter else x
    backend.record = {"backend": "openvino:cpu", "precision": m["precision"], "modality": m.get("modality"),
                      "denoiser": m.get("denoiser"), "engine_dir": str(backend.engine_dir),
                      "manifest_sha256": sha256_file(backend.engine_dir / "manifest.json"), "model_files": m["files"],
                      "source_model_files": m.get("source_model_files", {}), "certseg_rt": __version__}
    cert = certify(backend, model_x, n0=n0, n=n, tau=tau, alpha=alpha, seed=seed, correction=correction)
    classes = m["classes"]
    summary = {"image": str(image_path), "image_sha256": sha256_file(image_path), "classes": classes,
               **cert.summary(classes), **fit.describe()}
    if adapter:
        summary["adapter"] = adapter
    summary["radius_at_input_resolution"] = cert.radius / (adapter["operator_norm"] if adapter else 1.0)
    summary["certseg_rt"] = __version__
    if out is not None:
        write_mask(out, cert.labels)
        summary["mask"] = str(out)
    return summary, cert.labels


# Fields that differ between two runs of the same certificate: timing, and paths the caller chose.
VOLATILE = ("seconds", "image", "engine_dir", "mask")


def comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in VOLATILE}


# ---- a hand-made engine whose base model is known exactly -----------------------------------------------------

THRESHOLDS = (0.25, 0.5, 0.75)


def threshold_labels(x_noisy: np.ndarray) -> np.ndarray:
    """The threshold engine's base model in numpy: uint8 labels (B, H, W) of float32 (B, C, H, W).

    One channel: the number of THRESHOLDS the value exceeds (classes 0..3).  Three channels:
    (x0 > 0.5) + 2 (x2 > 0.5), so the labels depend on the noise of more than one channel.  Comparisons only:
    OpenVINO in f32 computes the same labels bit for bit, so vote counts reveal any difference in the noise.
    """
    if x_noisy.shape[1] == 1:
        return sum((x_noisy[:, 0] > np.float32(t)).astype(np.uint8) for t in THRESHOLDS).astype(np.uint8)
    return ((x_noisy[:, 0] > np.float32(0.5)).astype(np.uint8) + 2 * (x_noisy[:, 2] > np.float32(0.5))).astype(np.uint8)


def threshold_engine(out: Path, *, channels: int = 1, height: int = 24, width: int = 20, sigma: float = 0.25,
                     batch_sizes=(1, 4, 8), replicate: bool = False) -> Path:
    """An OpenVINO engine directory (the contract's fields) whose fused graph is `threshold_labels`.

    With `replicate`, the model takes 3 channels and the manifest's adapter replicates a 1-channel image into
    them (issue 13's adapter field), so the noise is drawn in the 3-channel space.
    """
    import openvino as ov
    import openvino.opset13 as ops

    from certseg_rt.manifest import write_manifest

    x = ops.parameter([-1, channels, height, width], np.float32, name="x_noisy")

    def above(plane, t):
        return ops.convert(ops.greater(plane, ops.constant(np.float32(t))), "i32")

    if channels == 1:
        plane = ops.squeeze(x, ops.constant(np.array([1], np.int64)))
        total = above(plane, THRESHOLDS[0])
        for t in THRESHOLDS[1:]:
            total = ops.add(total, above(plane, t))
    else:
        axis = ops.constant(np.int64(1))
        first = ops.gather(x, ops.constant(np.int64(0)), axis)
        last = ops.gather(x, ops.constant(np.int64(2)), axis)
        total = ops.add(above(first, 0.5), ops.multiply(above(last, 0.5), ops.constant(np.int32(2))))
    labels = ops.convert(total, "u8")
    labels.output(0).get_tensor().set_names({"labels"})
    out.mkdir(parents=True)
    ov.save_model(ov.Model([labels], [x], "threshold"), str(out / "model.xml"), compress_to_fp16=False)
    ov.save_model(ov.Model([labels], [x], "threshold_segmenter"), str(out / "segmenter.xml"), compress_to_fp16=False)
    version = ov.get_version()
    lo, opt, hi = batch_sizes
    manifest = {
        "backend": "openvino", "precision": "fp32", "sigma": sigma, "denoiser": None,
        "classes": ["none", "low", "mid", "high"], "modality": None,
        "input": {"channels": channels, "height": height, "width": width, "range": [0.0, 1.0]},
        "batch_sizes": {"min": lo, "opt": opt, "max": hi},
        "graphs": {"fused": "model.xml", "segmenter": "segmenter.xml"},
        "openvino": {"version": version, "inference_precision": "f32", "executed_precision": "f32", "cpu_isa": [],
                     "threads": 1, "performance_hint": "LATENCY"},
        "tools": {"openvino": version},
    }
    if replicate:
        manifest["adapter"] = {"kind": "replicate", "image_channels": 1, "channels": channels,
                               "operator_norm": float(np.sqrt(channels))}
    write_manifest(out, manifest)
    return out


def threshold_counts(x: np.ndarray, num: int, seed: int, offset: int, sigma: float, batch: int) -> np.ndarray:
    """Votes of the threshold engine's base model, computed in numpy (certseg_rt.kernels' noise)."""
    from certseg_rt import kernels

    counts = np.zeros((4, *x.shape[1:]), np.int32)
    for start in range(0, num, batch):
        b = min(batch, num - start)
        noisy = kernels.fill_noisy(x, sigma, seed, offset + start, np.empty((b, *x.shape), np.float32))
        kernels.accumulate_votes(threshold_labels(noisy), counts)
    return counts
