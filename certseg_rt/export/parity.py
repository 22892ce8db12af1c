"""Parity of the exported graphs: ONNX Runtime next to torch (or, for a user's ONNX segmenter, the composed
graph next to its parts run one after the other), on noisy held-out phantoms.

Every runner (torch, each graph) sees the inputs in chunks that stay inside the engine's batch range and
a memory budget, so a check never asks for more memory than the certification it vouches for:

* a chunk holds between the engine's MIN and MAX batch samples; an engine with a fixed batch B gets
  exactly B (the last chunk is padded with copies of its last sample, whose outputs are dropped);
* a runner's first chunk has MIN samples and its peak resident memory is measured (Linux: VmHWM, reset
  through /proc/self/clear_refs); per-sample memory = that peak growth / MIN;
* its other chunks hold floor((budget - retained) / per-sample memory) samples, clamped to [MIN, MAX],
  where retained is what the process still holds above its size when the check started;
* budget: ``--memory-budget`` MiB, by default half the memory available when the check starts; where
  peak memory cannot be measured, chunks hold MIN samples.

Parity sessions run without ONNX Runtime's CPU memory arena and freed heap is handed back to the system
after each runner (glibc ``malloc_trim``), so one runner's memory is given back before the next starts.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .. import kernels
from ..errors import CertsegError
from ..runtime.memory import default_memory_budget

MIB = 1 << 20
DEFAULT_RANGE = (1, 16, 64)  # export.build.DEFAULT_BATCH_SIZES (a builder that passes none gets these)


# ---- memory -------------------------------------------------------------------------------------------------

def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc), so the next runner starts from a smaller process."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak resident memory growth of this process inside a ``with`` block, in bytes (``growth``; None where it
    cannot be measured).  Blocks nest: an inner block's reset of the peak is accounted to the outer ones."""

    _active: ClassVar[list[PeakMemory]] = []

    def __enter__(self):
        self.start = self.seen = None
        try:
            hwm = _status_kib("VmHWM")
            for outer in PeakMemory._active:
                if outer.seen is not None and hwm is not None:
                    outer.seen = max(outer.seen, hwm)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (the peak) to the current resident size
            self.start = self.seen = _status_kib("VmRSS")
        except OSError:
            pass
        PeakMemory._active.append(self)
        return self

    def __exit__(self, *exc):
        PeakMemory._active.remove(self)
        hwm = _status_kib("VmHWM") if self.start is not None else None
        self.growth = None if hwm is None else max(max(self.seen, hwm) - self.start, 0) * 1024
        return False


# ---- chunked running ----------------------------------------------------------------------------------------

@dataclass
class BatchPlan:
    """How parity runs: the engine's batch range (lo == hi: a fixed batch) and the memory budget."""
    lo: int
    hi: int
    fixed: bool
    budget: int
    chunks: dict = field(default_factory=dict)  # runner -> {"chunk": samples, "per_sample_mib": ...}
    start_kib: int | None = field(default_factory=lambda: _status_kib("VmRSS"))  # the process when the check began

    @classmethod
    def for_engine(cls, batch_sizes=None, fixed_batch: int | None = None, budget: int | None = None) -> BatchPlan:
        if fixed_batch:
            lo = hi = int(fixed_batch)
        else:
            lo, _, hi = (int(b) for b in (batch_sizes or DEFAULT_RANGE))
        return cls(lo=lo, hi=hi, fixed=bool(fixed_batch), budget=int(budget or default_memory_budget()))

    def run(self, name: str, fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
        """fn over x in chunks (see the module docstring); outputs concatenated, padding dropped."""
        outputs, start, chunk = [], 0, self.lo
        while start < len(x):
            part = x[start:start + chunk]
            if len(part) < self.lo or (self.fixed and len(part) < chunk):
                part = np.concatenate([part, np.repeat(part[-1:], max(self.lo, chunk) - len(part), axis=0)])
            if start == 0:
                with PeakMemory() as peak:
                    out = fn(np.ascontiguousarray(part))
                per_sample = None if peak.growth is None else max(peak.growth / len(part), 1.0)
                if not self.fixed and per_sample is not None:
                    _trim_heap()
                    now = _status_kib("VmRSS")
                    retained = 0 if now is None or self.start_kib is None else max(now - self.start_kib, 0) * 1024
                    chunk = min(max(math.floor((self.budget - retained) / per_sample), self.lo), self.hi)
                self.chunks[name] = {"chunk": chunk, "per_sample_mib": None if per_sample is None else
                                     round(per_sample / MIB, 1)}
            else:
                out = fn(np.ascontiguousarray(part))
            taken = min(len(x) - start, len(part))
            outputs.append(np.asarray(out)[:taken])
            start += taken
        _trim_heap()
        return np.concatenate(outputs)

    def record(self) -> dict:
        return {"batch_range": [self.lo, self.hi], "fixed_batch": self.fixed, "budget_mib": round(self.budget / MIB),
                "runners": self.chunks}


def onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """x -> the graph's first output, with ONNX Runtime on CPU, without the memory arena (memory returned after
    each call) and with its log kept off the user's terminal (a failure is raised as one line instead)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = False
    so.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        raise CertsegError(f"ONNX Runtime cannot load the exported graph {Path(path).name} ({_first_line(e)}); "
                           f"report the model")
    name = session.get_inputs()[0].name

    def run(x):
        try:
            return session.run(None, {name: x})[0]
        except Exception as e:  # noqa: BLE001
            raise CertsegError(f"ONNX Runtime fails on the exported graph {Path(path).name} for a batch of {len(x)} "
                               f"({_first_line(e)}); report the model")
    return run


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


# ---- the checks ---------------------------------------------------------------------------------------------

def parity_inputs(source, sigma: float, count: int, seed: int = 20240) -> np.ndarray:
    """Noisy held-out phantoms, noised with the project's keyed noise: what the graph sees when certifying."""
    from ..data import HELD_OUT_SEEDS

    adapter = source.adapter  # noise in the noise space: the phantom replicated into the denoiser's channels
    out = np.empty((count, source.noise_channels, source.height, source.width), np.float32)
    for i in range(count):
        image = source.phantom(HELD_OUT_SEEDS[500 + i // 4]).image
        kernels.fill_noisy(image if adapter is None else adapter.image(image), sigma, seed, i, out=out[i:i + 1])
    return out


def torch_runner(module):
    import torch

    def run(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
    return run


def check_parity(source, sigma: float, fused: Path, segmenter: Path, denoiser: Path | None, plan: BatchPlan,
                 count: int = 16, min_agreement: float = 0.999) -> dict:
    """Run the exported graphs with ONNX Runtime next to torch on noisy phantoms."""
    x = parity_inputs(source, sigma, count)
    one_step = source.one_step_denoiser(sigma)
    # torch's labels are the argmax of its logits (DenoiseSegment computes exactly that, ties to the lowest class)
    denoised = plan.run("torch denoiser", torch_runner(one_step.eval()), x) if one_step is not None else x
    torch_logits = plan.run("torch segmenter", torch_runner(source.segmenter), denoised)
    torch_labels = torch_logits.argmax(axis=1).astype(np.uint8)
    onnx_labels = plan.run(Path(fused).name, onnx_runner(fused), x)
    agreement = float(np.mean(onnx_labels == torch_labels))
    parity = {"inputs": f"{count} noisy held-out phantoms at sigma={sigma}", "label_agreement": agreement,
              "logits_max_abs_diff": float(np.abs(plan.run(Path(segmenter).name, onnx_runner(segmenter), denoised)
                                                  - torch_logits).max())}
    if denoiser is not None:
        parity["denoised_max_abs_diff"] = float(np.abs(plan.run(Path(denoiser).name, onnx_runner(denoiser), x)
                                                       - denoised).max())
    if agreement < min_agreement:
        raise CertsegError(f"the engine's graph agrees with torch on only {agreement:.4%} of pixels "
                           f"(need {min_agreement:.1%}); try another --exporter or --precision, or --force to "
                           f"accept it (it is certified as itself either way)")
    return parity


def composition_parity(source, sigma: float, graphs, plan: BatchPlan, count: int = 8,
                       min_agreement: float = 0.999) -> dict:
    """A user's ONNX segmenter: the composed graph against the denoiser graph and the user's graph run one after
    the other (same noisy inputs), and the denoiser graph against torch."""
    x = parity_inputs(source, sigma, count)
    stage = plan.run(graphs.denoiser.name, onnx_runner(graphs.denoiser), x) if graphs.denoiser is not None else x
    expected = plan.run(graphs.segmenter.name, onnx_runner(graphs.segmenter), stage).argmax(axis=1).astype(np.uint8)
    got = plan.run(graphs.fused.name, onnx_runner(graphs.fused), x)
    report = {"inputs": f"{count} noisy held-out phantoms at sigma={sigma}",
              "label_agreement_with_separate_graphs": float(np.mean(got == expected))}
    if graphs.denoiser is not None:
        ref = plan.run("torch denoiser", torch_runner(source.one_step_denoiser(sigma).eval()), x)
        report["denoised_max_abs_diff"] = float(np.abs(stage - ref).max())
    if report["label_agreement_with_separate_graphs"] < min_agreement:
        raise CertsegError(f"composed graph agrees with the separate graphs on only "
                           f"{report['label_agreement_with_separate_graphs']:.4%} of pixels; report the model")
    return report


def check_graphs(source, sigma: float, graphs, min_agreement: float = 0.999, *, batch_sizes=None,
                 memory_budget: int | None = None) -> dict:
    """Parity of exported graphs: against torch, or (ONNX segmenter) against the graphs run separately; run
    within the engine's batch range (`batch_sizes` MIN,OPT,MAX; a fixed-batch graph: its batch) and
    `memory_budget` bytes (default: half the memory available)."""
    plan = BatchPlan.for_engine(batch_sizes, getattr(graphs, "fixed_batch", None), memory_budget)
    with PeakMemory() as peak:
        if source.segmenter_onnx is None:
            report = check_parity(source, sigma, graphs.fused, graphs.segmenter, graphs.denoiser, plan,
                                  min_agreement=min_agreement)
        else:
            report = composition_parity(source, sigma, graphs, plan, min_agreement=min_agreement)
    report["batching"] = {**plan.record(),
                          "peak_rss_growth_mib": None if peak.growth is None else round(peak.growth / MIB)}
    return report
