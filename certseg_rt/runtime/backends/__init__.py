"""Runners: one module per backend, registered by name (the runner half of Polygraphy's loader/runner split).

An engine runner module defines ``open_engine(engine_dir, manifest, *, batch_size, threads, provider)``:
it checks what the manifest asks of this machine (its library's version, the hardware), opens the
engine and returns a backend (``certify.Backend``: ``sample_counts``, ``segment`` for the clean
segmenter, ``record``).  Hashes and field types are checked before, by ``manifest.load_manifest``.
A module is imported only when an engine of its backend is opened, so the runtime starts fast and
works without the libraries of backends it does not use.  Nothing outside these modules imports a
backend's library.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ...errors import CertsegError
from ...manifest import REBUILD


@dataclass(frozen=True)
class Runner:
    module: str  # under certseg_rt.runtime.backends
    extra: str  # the pip extra that installs its library
    gpu: bool = False  # needs an NVIDIA GPU (one per Ray worker)


# The torch reference runs a model directory rather than an engine directory (torch_eager.reference_backend).
RUNNERS: dict[str, Runner] = {
    "onnxruntime": Runner("onnxruntime", "cpu"),
    "tensorrt": Runner("tensorrt", "gpu", gpu=True),
}

# Runners of a model directory (torch modules, no engine): the module defines
# ``open_model(model_dir, sigma, *, batch_size, precision, ...)``.
MODEL_RUNNERS: dict[str, Runner] = {
    "torch-cuda": Runner("torch_cuda", "export", gpu=True),
}


def runner(backend: str) -> ModuleType:
    """The runner module of an engine's backend, or one line saying which backends this runtime knows."""
    entry = RUNNERS.get(backend)
    if entry is None:
        raise CertsegError(f"engine field backend is {backend!r}, which this runtime cannot run (it knows "
                           f"{', '.join(sorted(RUNNERS))}); {REBUILD}")
    return importlib.import_module(f"{__name__}.{entry.module}")


def open_engine(engine_dir: Path, manifest: dict, *, batch_size: int | None = None, threads: int | None = None,
                provider: str = "cpu"):
    """The backend for a checked manifest, opened by its runner module."""
    return runner(manifest["backend"]).open_engine(Path(engine_dir), manifest, batch_size=batch_size,
                                                   threads=threads, provider=provider)


def engine_batch_size(manifest: dict, batch_size: int | None) -> int:
    """The batch size to run: the requested one inside the engine's range, or the engine's optimum."""
    sizes = manifest["batch_sizes"]
    batch = batch_size or sizes["opt"]
    if not sizes["min"] <= batch <= sizes["max"]:
        raise CertsegError(f"batch size {batch} is outside the engine's range {sizes['min']}..{sizes['max']}")
    return batch


def open_model(backend: str, model_dir, sigma: float, **options):
    """The backend of a model directory, opened by its runner module (MODEL_RUNNERS), or one line naming those known."""
    entry = MODEL_RUNNERS.get(backend)
    if entry is None:
        raise CertsegError(f"backend {backend!r} does not run a model directory (these do: "
                           f"{', '.join(sorted(MODEL_RUNNERS))}); build an engine for the others")
    return importlib.import_module(f"{__name__}.{entry.module}").open_model(model_dir, sigma, **options)
