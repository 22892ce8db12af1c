"""Build an engine directory: ONNX graphs -> the backend's engine files + manifest.json, atomically.

The directory is assembled in a hidden sibling and renamed into place at the end, so a failed
or interrupted build leaves nothing behind and never a half-written engine.  What is specific to a
backend (its optimisation, precision, engine files, parity against torch) is its builder module's
(``export/builders/``); this module does what every backend shares.
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
from .builders import BUILDERS, builder
from .loaders import SourceModel
from .memory import memory_profile
from .onnx_export import OPSET, export_onnx

BACKENDS = tuple(BUILDERS)
DEFAULT_BATCH_SIZES = (1, 16, 64)  # min, opt, max of the batch dimension


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def tool_versions() -> dict:
    """The export side's tools (each builder adds its backend's library to these)."""
    import onnx
    import torch

    versions = {"certseg_rt": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "onnx": onnx.__version__, "opset": OPSET}
    try:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return versions


def check_request(backend: str, precision: str, options: dict | None = None) -> None:
    """Refuse, in one line and before any heavy work, a build this machine cannot make."""
    builder(backend).check_request(precision, options or {})


def build_engine(source: SourceModel, sigma: float, out: Path, *, backend: str = "onnxruntime",
                 precision: str = "fp32", batch_sizes: tuple[int, int, int] = DEFAULT_BATCH_SIZES,
                 exporter: str = "torchscript", threads: int | None = None, parity: bool = True,
                 force: bool = False, options: dict | None = None, log=print) -> dict:
    """Export, let the backend's builder make and check its engine, write the manifest; returns the manifest.

    Reduced precision changes the base model, so its labels need only agree with torch fp32 on 99% of
    pixels (fp32: 99.9%); below that the build fails unless `force`.  Either way the engine is what
    gets certified.
    """
    make = builder(backend)
    make.check_request(precision, options or {})
    lo, opt, hi = batch_sizes
    if not 1 <= lo <= opt <= hi:
        raise CertsegError(f"--batch-sizes {lo},{opt},{hi} must satisfy 1 <= MIN <= OPT <= MAX")
    if threads is not None and threads < 1:
        raise CertsegError(f"--threads {threads} must be >= 1 (omit it to use all cores)")
    threads = threads or os.cpu_count() or 1
    with staged_directory(out) as stage:
        log(f"exporting ONNX graphs ({exporter}, opset {OPSET})")
        graphs = export_onnx(source, sigma, stage, exporter=exporter, parity=False)
        fields = make.build(stage, graphs, source=source, sigma=sigma, precision=precision, batch_sizes=batch_sizes,
                            threads=threads, parity=parity, force=force, options={**(options or {}), "out": out},
                            log=log)
        manifest = write_manifest(stage, {
            "backend": backend,
            "precision": precision,
            "sigma": sigma,
            "denoiser": None if graphs.metadata["timestep"] is None else {
                "timestep": graphs.metadata["timestep"], "alpha_bar": graphs.metadata["alpha_bar"],
                "graph": graphs.denoiser.name},
            "classes": source.classes,
            "modality": source.modality,
            "input": graphs.metadata["input"],
            "batch_sizes": {"min": lo, "opt": opt, "max": hi},
            "exporter": exporter,
            "source_model_files": hash_files(source.files),
            "intake": source.intake,
            "memory": memory_profile(source, sigma) if source.segmenter is not None else None,
            **fields,
            "tools": {**tool_versions(), **fields.get("tools", {})},
        })
    return manifest
