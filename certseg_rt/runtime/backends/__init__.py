"""Runners: one module per backend, registered by name (the runner half of Polygraphy's loader/runner split).

Two kinds, one registry each:

* ``RUNNERS``: engine runners.  Their module defines
  ``open_engine(engine_dir, manifest, *, batch_size, threads, provider, max_memory, cache_dir, calls)``: it
  checks what the manifest asks of this machine (its library's version, the hardware), opens the engine and
  returns a backend (``certify.Backend``: ``sample_counts``, ``segment`` for the clean segmenter, ``record``),
  ready for calls of ``calls`` samples (default a default certify's n0 and n): a runner that compiles per
  shape compiles those at open, through the per-user compiled-model cache (``cache_dir``: a folder, None
  for the default, False for none; ``runtime/model_cache.py``).  Runners with nothing to compile ignore both.
  Hashes and field types are checked before, by ``manifest.load_manifest``.
* ``REFERENCES``: reference runners, which run a model directory (the user's torch model) instead of an
  engine directory.  Their module defines ``open_model(model_dir, sigma, *, batch_size, denoiser, threads,
  precision, layout, max_memory, **options)``, ``PRECISIONS``, ``LAYOUTS`` and ``unavailable(**options)``
  (None, or one line saying why it cannot run here); ``options`` are the entry's (e.g. torch-cuda's form).
  An entry's ``variants`` are other base models of the same runner (torch-cuda-fused's compiled models): a
  variant is passed to ``open_model(variant=...)`` and names bench rows ``RUNNER:PRECISION:VARIANT``.
  ``batch_size`` None leaves the batch to the runner (16 on the CPU; on a GPU the device memory decides).

Adding a backend is its module plus one line below.  A module is imported only when an engine of its
backend (or its reference) is opened, so the runtime starts fast and works without the libraries of
backends it does not use.  Nothing outside these modules imports a backend's library.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from ...errors import CertsegError
from ...manifest import REBUILD


@dataclass(frozen=True)
class Runner:
    module: str  # under certseg_rt.runtime.backends
    extra: str  # the pip extra that installs its library
    gpu: bool = False  # needs an NVIDIA GPU (one per Ray worker; bench compares it with GPU rows)
    options: dict = field(default_factory=dict)  # what open_model / unavailable get besides the common arguments
    variants: tuple[str, ...] = ()  # other base models of this runner (open_model(variant=...))


RUNNERS: dict[str, Runner] = {
    "onnxruntime": Runner("onnxruntime", "cpu"),
    "openvino": Runner("openvino", "openvino"),
    "tensorrt": Runner("tensorrt", "gpu", gpu=True),
}

REFERENCES: dict[str, Runner] = {
    "torch-eager": Runner("torch_eager", "export"),
    # On a GPU: the careful PyTorch user's certify (the baseline), the weak eager loop of the earlier measurements
    # (host noise and votes) and the fused device loop (Philox noise, model and votes in one CUDA graph), with its
    # torch.compile'd variants (torch_compile.VARIANTS).
    "torch-cuda-careful": Runner("torch_cuda_careful", "export", gpu=True),
    "torch-cuda-eager": Runner("torch_cuda", "export", gpu=True, options={"form": "eager"}),
    "torch-cuda-fused": Runner("torch_cuda", "export", gpu=True, options={"form": "fused"},
                               variants=("compiled", "compiled-autotune")),
}


def runner(backend: str) -> ModuleType:
    """The runner module of an engine's backend, or one line saying which backends this runtime knows."""
    entry = RUNNERS.get(backend)
    if entry is None:
        raise CertsegError(f"engine field backend is {backend!r}, which this runtime cannot run (it knows "
                           f"{', '.join(sorted(RUNNERS))}); {REBUILD}")
    return importlib.import_module(f"{__name__}.{entry.module}")


def reference(name: str) -> ModuleType:
    """The module of a reference runner (a model directory rather than an engine)."""
    entry = REFERENCES.get(name)
    if entry is None:
        raise CertsegError(f"reference runner {name!r} is unknown; choose one of {', '.join(sorted(REFERENCES))}")
    return importlib.import_module(f"{__name__}.{entry.module}")


def open_engine(engine_dir: Path, manifest: dict, *, batch_size: int | None = None, threads: int | None = None,
                provider: str = "cpu", max_memory: int | None = None, cache_dir=None, calls=None):
    """The backend for a checked manifest, opened by its runner module."""
    return runner(manifest["backend"]).open_engine(Path(engine_dir), manifest, batch_size=batch_size,
                                                   threads=threads, provider=provider, max_memory=max_memory,
                                                   cache_dir=cache_dir, calls=calls)


def open_model(model_dir: Path, sigma: float, *, name: str = "torch-eager", batch_size: int | None = 16,
               denoiser: bool = True, threads: int | None = None, precision: str = "fp32", layout: str = "nchw",
               max_memory: int | None = None, variant: str | None = None):
    """The backend of a reference runner for a model directory (batch_size None: the runner's default)."""
    module = reference(name)
    extra = dict(REFERENCES[name].options)
    if variant is not None:
        if variant not in REFERENCES[name].variants:
            raise CertsegError(f"reference runner {name} has no variant {variant!r}"
                               + (f"; it has {', '.join(REFERENCES[name].variants)}" if REFERENCES[name].variants
                                  else ""))
        extra["variant"] = variant
    if batch_size is not None:
        extra["batch_size"] = batch_size
    return module.open_model(Path(model_dir), sigma, denoiser=denoiser, threads=threads, precision=precision,
                             layout=layout, max_memory=max_memory, **extra)


def parse_reference(item: str) -> tuple[str, str, str, str | None]:
    """'RUNNER[:PRECISION[:LAYOUT|VARIANT]]' -> (runner, precision, layout, variant), checked against the registry;
    one line naming what is wrong.  Precision defaults to fp32, layout to the runner's first."""
    name, _, rest = item.partition(":")
    precision, _, third = rest.partition(":")
    entry = REFERENCES.get(name)
    module = reference(name) if entry is not None else None
    precision = precision or "fp32"
    layout, variant = (module.LAYOUTS[0], third) if entry is not None and third in entry.variants else \
        (third or (module.LAYOUTS[0] if module else "nchw"), None)
    if module is None or precision not in module.PRECISIONS or layout not in module.LAYOUTS:
        known = ", ".join(f"{n} ({'/'.join(reference(n).PRECISIONS)}; {'/'.join(reference(n).LAYOUTS + r.variants)})"
                          for n, r in REFERENCES.items())
        raise CertsegError(f"reference {item!r}: give RUNNER:PRECISION[:LAYOUT or VARIANT] among {known}")
    return name, precision, layout, variant


def reference_unavailable(name: str) -> str | None:
    """None when the reference runner can run here, else one line saying why not."""
    return reference(name).unavailable(**REFERENCES[name].options)


def engine_batch_size(manifest: dict, batch_size: int | None, *, max_memory: int | None = None,
                      costs=None) -> int:
    """The batch size to run: the requested one (default the engine's optimum) inside the engine's range,
    lowered to the largest batch of the range whose estimated peak memory fits ``max_memory`` (default:
    half the memory available now) when the runner knows its ``costs``.  An engine built for a fixed batch
    runs that batch whatever is asked (the counts do not depend on the batch size)."""
    from ..memory import default_memory_budget, fit_batch_size, parse_memory

    sizes = manifest["batch_sizes"]
    if sizes.get("fixed"):
        return sizes["opt"]
    batch = batch_size or sizes["opt"]
    if not sizes["min"] <= batch <= sizes["max"]:
        raise CertsegError(f"batch size {batch} is outside the engine's range {sizes['min']}..{sizes['max']}")
    if costs is None:
        return batch
    budget = default_memory_budget() if max_memory is None else parse_memory(max_memory)
    return fit_batch_size(costs.estimate(manifest), budget, sizes["min"], batch)
