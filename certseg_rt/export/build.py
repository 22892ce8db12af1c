"""Build an engine directory: ONNX graphs (optimised for the target) + manifest.json, atomically.

The directory is assembled in a hidden sibling and renamed into place at the end, so a failed
or interrupted build leaves nothing behind and never a half-written engine.
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .. import __version__
from ..errors import CertsegError
from ..manifest import MANIFEST_NAME, hash_files, write_manifest
from .loaders import SourceModel
from .onnx_export import OPSET, check_graphs, export_onnx

BACKENDS = ("onnxruntime", "tensorrt")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
DEFAULT_BATCH_SIZES = (1, 16, 64)  # min, opt, max of the batch dimension
ORT_PRECISIONS = ("fp32", "int8")
TRT_PRECISIONS = ("fp32", "fp16", "bf16")


@contextmanager
def staged_directory(out: Path):
    """Yield an empty staging directory; on success it replaces `out`, on failure it is removed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CertsegError(f"--out {out} exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise CertsegError(f"--out {out} is a non-empty directory that is not an engine directory; "
                           f"choose a new path (it would be replaced)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it private; an engine directory is ordinary
    except OSError as e:
        raise CertsegError(f"cannot write to {out.parent}: {e.strerror}; choose a writable --out")
    try:
        yield stage
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _optimise_for_onnxruntime(path: Path, threads: int) -> dict:
    """Apply ONNX Runtime's basic (portable, hardware-independent) graph optimisations offline, in place.

    Extended and layout optimisations depend on the machine that runs them, so they stay online.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    tmp = path.with_suffix(".opt.onnx")
    so.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    os.replace(tmp, path)
    return {"offline": "basic", "online": "all", "intra_op_num_threads": threads, "inter_op_num_threads": 1,
            "execution_mode": "sequential"}


def tool_versions() -> dict:
    import onnx
    import torch

    versions = {"certseg_rt": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "onnx": onnx.__version__, "opset": OPSET}
    try:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def require_tensorrt() -> None:
    """One line naming what is missing for TensorRT engines (the tensorrt package, a GPU, the CUDA kernels)."""
    from .tensorrt_build import check_tensorrt_environment

    check_tensorrt_environment()


def build_engine(source: SourceModel, sigma: float, out: Path, *, backend: str = "onnxruntime",
                 precision: str = "fp32", batch_sizes: tuple[int, int, int] = DEFAULT_BATCH_SIZES,
                 exporter: str = "torchscript", threads: int | None = None, parity: bool = True,
                 force: bool = False, tensorrt: dict | None = None, log=print) -> dict:
    """Export, optimise (and quantise), check parity, write the manifest; returns the manifest.

    Reduced precision changes the base model, so its labels need only agree with torch fp32 on 99% of
    pixels (fp32: 99.9%); below that the build fails unless `force`.  Either way the engine is what
    gets certified.
    """
    if backend not in BACKENDS:
        raise CertsegError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    allowed = ORT_PRECISIONS if backend == "onnxruntime" else TRT_PRECISIONS
    if backend == "onnxruntime" and precision in ("bf16", "fp16"):
        # Measured with onnxruntime 1.32 on this project's graph: a bf16 cast fails to load ("Could not find an
        # implementation for Mul(14)"): the CPU execution provider has no bfloat16 arithmetic at all; an fp16
        # cast loads but runs slower than fp32 (its kernels convert back to fp32).
        raise CertsegError(f"--precision {precision} is not available for onnxruntime: its CPU execution provider has "
                           f"no {precision} arithmetic kernels (a {precision} graph "
                           f"{'does not load' if precision == 'bf16' else 'runs slower than fp32'}); use --precision "
                           f"int8 (AVX-512 VNNI) on a CPU, or --backend tensorrt --precision {precision} on a GPU")
    if precision not in allowed:
        raise CertsegError(f"--precision {precision} is not available for {backend}; choose one of {', '.join(allowed)}")
    if backend == "tensorrt":
        require_tensorrt()
    lo, opt, hi = batch_sizes
    if not 1 <= lo <= opt <= hi:
        raise CertsegError(f"--batch-sizes {lo},{opt},{hi} must satisfy 1 <= MIN <= OPT <= MAX")
    if threads is not None and threads < 1:
        raise CertsegError(f"--threads {threads} must be >= 1 (omit it to use all cores)")
    threads = threads or os.cpu_count() or 1
    with staged_directory(out) as stage:
        log(f"exporting ONNX graphs ({exporter}, opset {OPSET})")
        graphs = export_onnx(source, sigma, stage, exporter=exporter, parity=False)
        log("optimising for ONNX Runtime (offline: basic graph optimisations)")
        ort_settings = {}
        for path in (graphs.fused, graphs.segmenter, graphs.denoiser):
            if path is not None:
                ort_settings = _optimise_for_onnxruntime(path, threads)
        quantisation = None
        if precision == "int8":
            from .onnx_export import INPUT_NAME, parity_inputs
            from .quantize import quantize_int8

            log("quantising to int8 (static, calibrated on noisy phantoms)")
            quantisation = quantize_int8(graphs.fused, parity_inputs(source, sigma, 32, seed=7), INPUT_NAME)
        report = {"skipped": True}
        if parity:
            log("checking parity with torch on noisy phantoms")
            # The ONNX graphs stay fp32 for TensorRT (its precision is checked on the engine below).
            floor = 0.0 if force else (0.999 if precision == "fp32" or backend == "tensorrt" else 0.99)
            report = check_graphs(source, sigma, graphs, min_agreement=floor)
        engine_fields = {}
        if backend == "tensorrt":
            from .onnx_export import parity_inputs
            from .tensorrt_build import build_tensorrt_stage, default_timing_cache

            options = dict(tensorrt or {})
            options.setdefault("timing_cache_path", default_timing_cache(out))
            meta = graphs.metadata["input"]
            engine_fields = build_tensorrt_stage(graphs.fused, stage, inputs=parity_inputs(source, sigma, 16),
                                                 precision=precision,
                                                 input_shape=(meta["channels"], meta["height"], meta["width"]),
                                                 batch_sizes=batch_sizes, force=force, log=log, **options)
        manifest = write_manifest(stage, {
            "backend": backend,
            "precision": precision,
            "quantisation": quantisation,
            "sigma": sigma,
            "denoiser": None if graphs.metadata["timestep"] is None else {
                "timestep": graphs.metadata["timestep"], "alpha_bar": graphs.metadata["alpha_bar"],
                "graph": graphs.denoiser.name},
            "classes": source.classes,
            "modality": source.modality,
            "input": graphs.metadata["input"],
            "batch_sizes": {"min": lo, "opt": opt, "max": hi},
            "graphs": {"fused": graphs.fused.name, "segmenter": graphs.segmenter.name},
            "onnxruntime": ort_settings,
            "exporter": exporter,
            "parity": report,
            "source_model_files": hash_files(source.files),
            "intake": source.intake,
            "tools": tool_versions(),
            **engine_fields,
        })
    return manifest
