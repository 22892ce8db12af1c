"""torch.compile (inductor) of DenoiseSegment for the fused torch-cuda loop: another base model, certified as itself.

The network (8-64 channels, GroupNorm, SiLU, skip concatenations) is bound by kernel launches and memory traffic;
inductor fuses its pointwise and normalisation work into fewer kernels.  Modes without CUDA graphs only
(``default``, ``max-autotune-no-cudagraphs``): the fused loop captures the compiled model in its own graph, beside
the noise and vote kernels; inductor's "reduce-overhead" graphs would nest in it.

* **Variants** (bench rows ``torch-cuda-fused:<precision>:<variant>``): ``compiled`` is inductor's default mode
  (fusion; convolutions stay cuDNN's), ``compiled-autotune`` is ``max-autotune-no-cudagraphs`` (also benchmarks
  Triton templates per convolution shape: minutes of compiling per image size, so the GPU check runs
  ``compiled`` only).
* **One compile per image size and precision** (and batch range): the batch dimension is marked dynamic at every
  call, so the call batches of a certify (10 and 100 samples) and of packed images share a graph (the
  convolutions' backend choice can guard a range of batches: a batch past it compiles once more, still general
  in the batch); height and width stay static (dynamo's automatic dynamic shapes are off for these calls, so a
  second image size compiles its own static kernels rather than one graph of symbolic sizes).
* **On-disk cache**: inductor's FX-graph, AOT-autograd and autotuning caches in ``cache_dir()`` (a folder per user,
  ``CERTSEG_CACHE_DIR`` overrides it), so a second process loads compiled kernels instead of compiling; the record
  says how many graphs came from the cache.
* **Compile time** is measured apart (the first call, at open) and recorded; a certify never includes it.
* **Parity**: labels of the compiled model at its precision against the uncompiled model in IEEE fp32 on noisy
  held-out phantoms (the project's keyed noise), at open; below the floor (99.9% fp32, 99.5% fp16/bf16) the runner
  refuses in one line.  The record says compiled, with the mode, the agreement and the torch version.
* **Failure** (no Triton for the GPU, an operator inductor cannot lower, a C++ compiler missing on the CPU): one
  line naming it and the way out (run without compile), never a traceback.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...errors import CertsegError

VARIANTS = {"compiled": "default", "compiled-autotune": "max-autotune-no-cudagraphs"}
PARITY_FLOOR = {"fp32": 0.999, "fp16": 0.995, "bf16": 0.995}
PARITY_SAMPLES = 8  # noisy held-out phantoms at the model's size (two phantoms, four noise draws each)


def cache_dir() -> Path:
    """The folder of inductor's on-disk caches: ``inductor`` in the project's one cache root (model_cache.cache_root:
    $CERTSEG_CACHE_DIR, else the platform's per-user cache folder), beside the OpenVINO engines' compiled models."""
    from ..model_cache import cache_root

    return cache_root() / "inductor"


def use_cache() -> Path:
    """Point inductor at cache_dir() with its persistent caches on.  Always set: importing torch._inductor sets
    TORCHINDUCTOR_CACHE_DIR to its /tmp default, and a child process inherits that, so an inherited value says
    nothing of what the user wants (CERTSEG_CACHE_DIR does)."""
    folder = cache_dir()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # inductor reads it at each use
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CertsegError(f"cannot create the compile cache {folder} ({e.strerror}); set CERTSEG_CACHE_DIR to a "
                           f"writable folder")
    import torch._inductor.config as inductor

    for flag in ("fx_graph_cache", "autotune_local_cache"):  # on by default in recent torch; named since 2.4
        if hasattr(inductor, flag):
            setattr(inductor, flag, True)
    return folder


def check_compiler(device_type: str, backend: str) -> None:
    """One line before any work when inductor cannot generate code for this device."""
    if backend != "inductor" or device_type != "cuda":
        return
    from torch.utils._triton import has_triton

    if not has_triton():
        raise CertsegError(f"compile=True needs Triton for inductor's GPU kernels and this torch {torch.__version__} "
                           f"has none (pip install the triton release that matches torch); run without compile")


def _cache_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"hits": int(counters["inductor"]["fxgraph_cache_hit"]),
            "misses": int(counters["inductor"]["fxgraph_cache_miss"])}


def graphs_so_far() -> int:
    """Graphs dynamo has compiled in this process (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompiledModel:
    """A module compiled by torch.compile, called like the module; ``warm`` compiles it (timed, once)."""

    def __init__(self, model: torch.nn.Module, *, variant: str = "compiled", backend: str = "inductor",
                 device_type: str = "cuda"):
        if variant not in VARIANTS:
            raise CertsegError(f"compile variant {variant!r}: choose one of {', '.join(VARIANTS)}")
        check_compiler(device_type, backend)
        self.variant, self.mode = variant, VARIANTS[variant]
        self.backend = backend if isinstance(backend, str) else getattr(backend, "__name__", "custom")
        self.cache = use_cache()
        options = {"mode": self.mode} if backend == "inductor" else {}
        self.fn = torch.compile(model, backend=backend, dynamic=None, **options)
        self.seconds: float | None = None  # the first compile (at open)
        self.seconds_per_size: dict[str, float] = {}  # each image size's compile
        self.cache_counts: dict[str, int] = {"hits": 0, "misses": 0}
        self.recompile_seconds = 0.0  # compiles found later (a batch range, in a capture's warm-up)
        self.recompiles = 0

    def note_recompiles(self, graphs_before: int, seconds: float) -> None:
        """A capture (or run) that compiled again: its time is compile time, not certify time."""
        new = graphs_so_far() - graphs_before
        if new > 0:
            self.recompiles += new
            self.recompile_seconds += seconds

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch._dynamo.config as dynamo

        # Batch dynamic on every call: a recompile (the convolutions' backend choice can guard a batch range) stays
        # general in the batch; height and width stay static.
        torch._dynamo.maybe_mark_dynamic(x, 0)
        with dynamo.patch(automatic_dynamic_shapes=False):
            return self.fn(x)

    def warm(self, run: Callable[[torch.Tensor], object], *examples: torch.Tensor) -> float:
        """Compile for the examples' image size by first calls run(example) (the batch dimension dynamic), timed
        apart; one line if it fails.  A size compiled before is a guard check, not a compile."""
        size = "x".join(map(str, examples[0].shape[-2:]))
        if size in self.seconds_per_size:
            return 0.0
        before = _cache_counts()
        start = time.perf_counter()
        try:
            for example in examples:
                run(example)
        except CertsegError:
            raise
        except Exception as e:  # noqa: BLE001 - inductor raises many kinds (BackendCompilerFailed, TritonMissing, ...)
            lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
            # BackendCompilerFailed says "backend='inductor' raised:" and the cause on the next line
            first = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
            raise CertsegError(f"torch.compile ({self.backend}, mode {self.mode}) failed: {type(e).__name__}: "
                               f"{first[:240]}; run without compile (compile=False)") from None
        seconds = time.perf_counter() - start
        self.seconds = seconds if self.seconds is None else self.seconds
        self.seconds_per_size[size] = round(seconds, 2)
        after = _cache_counts()
        self.cache_counts = {k: self.cache_counts[k] + after[k] - before[k] for k in after}
        return seconds

    def describe(self) -> dict:
        return {"variant": self.variant, "mode": self.mode, "backend": self.backend, "torch": torch.__version__,
                "seconds": None if self.seconds is None else round(self.seconds, 2),
                "seconds_per_size": dict(self.seconds_per_size),
                "recompiles": self.recompiles, "recompile_seconds": round(self.recompile_seconds, 2),
                "cache_dir": str(self.cache),
                "cache": {"graphs_loaded": self.cache_counts.get("hits", 0),
                          "graphs_compiled": self.cache_counts.get("misses", 0)}}


def label_agreement(reference: Callable[[torch.Tensor], torch.Tensor],
                    candidate: Callable[[torch.Tensor], torch.Tensor], inputs: np.ndarray, device) -> float:
    """Fraction of labels on which candidate(x) equals reference(x) over the noisy inputs (N, C, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(inputs, np.float32)).to(device)
    a, b = reference(x), candidate(x)
    return float((a == b).float().mean().item())


def check_parity(agreement: float, precision: str, variant: str) -> dict:
    floor = PARITY_FLOOR[precision]
    if agreement < floor:
        raise CertsegError(f"the {variant} model at {precision} gives the labels of the uncompiled fp32 model on "
                           f"{agreement:.4%} of the pixels of noisy held-out phantoms, under the floor of {floor:.1%}; "
                           f"run without compile or at another precision")
    return {"label_agreement": round(agreement, 6), "floor": floor,
            "inputs": f"{PARITY_SAMPLES} noisy held-out phantoms (keyed noise), against the uncompiled model in "
                      f"IEEE fp32"}
