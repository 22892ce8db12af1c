"""Helpers of the native-runtime tests and benchmark: build cpp_ext/ with the runtime, make OpenVINO engine
directories (``build-engine --backend openvino``), and certify with the Python runtime's command line."""
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


def run(program, *args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *map(str, args)], check=False, capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=None if env is None else {**os.environ, **env})


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


def openvino_engine(out: Path, precision: str = "fp32", *, model: str = "chest", threads: int | None = None,
                    batch_sizes=(1, 8, 32)) -> Path:
    """`certseg-rt build-engine --backend openvino --precision PRECISION` of a bundled model, into `out`."""
    from certseg_rt.export.build import build_engine
    from certseg_rt.export.loaders import load_source
    from certseg_rt.zoo import bundled_model_dir

    build_engine(load_source(bundled_model_dir(model)), 0.25, Path(out), backend="openvino", precision=precision,
                 batch_sizes=tuple(batch_sizes), threads=threads, log=lambda message: None)
    return Path(out)


def python_certificate(engine_dir: Path, image_path: Path, *, n0=10, n=100, tau=0.75, alpha=0.001, seed=0,
                       correction="holm", batch_size: int | None = None, out: Path | None = None,
                       extra: tuple = ()) -> tuple[dict, np.ndarray | None]:
    """(summary, labels) of `certseg-rt certify IMAGE --engine DIR --json [--out MASK]`: the Python runtime's
    certificate, through its command line (in this process).  labels: the written mask, when `out` is given."""
    import json

    from click.testing import CliRunner

    from certseg_rt.cli import main

    args = ["certify", str(image_path), "--engine", str(engine_dir), "--json", "--n0", n0, "--n", n, "--tau", tau,
            "--alpha", alpha, "--seed", seed, "--correction", correction]
    if batch_size is not None:
        args += ["--batch-size", batch_size]
    if out is not None:
        args += ["--out", str(out)]
    result = CliRunner().invoke(main, [str(a) for a in [*args, *extra]])
    assert result.exit_code == 0, result.output
    labels = None
    if out is not None:
        from PIL import Image

        labels = np.asarray(Image.open(out))
    return json.loads(result.stdout), labels


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
                     "threads": 1, "performance_hint": "LATENCY", "batching": "static-per-call"},
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
