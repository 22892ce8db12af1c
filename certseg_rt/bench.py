"""Latency of certifying one image, per backend and batch size, measured in one run on one machine.

Each row times the whole CERTIFY (n0 + n samples, noise, inference, votes, statistics) on a held-out
phantom, median of repeats after one warm-up.  Used by ``certseg-rt bench`` and ``benchmarks/``.
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from . import __version__
from .certify import certify


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "certseg_rt": __version__}
    for mod in ("numpy", "torch", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    from ._ext_loader import EXTENSION_STATUS

    info["extension"] = EXTENSION_STATUS
    return info


def time_certify(backend, image, *, n0: int, n: int, repeats: int) -> list[float]:
    certify(backend, image, n0=n0, n=n, seed=0)  # warm-up: first-run allocations, lazy init
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        certify(backend, image, n0=n0, n=n, seed=r + 1)
        times.append(time.perf_counter() - start)
    return times


def _row(backend_name, precision, image_size, n0, n, batch_size, times) -> dict:
    med = statistics.median(times)
    return {"backend": backend_name, "precision": precision, "image_size": image_size, "n0": n0, "n": n,
            "batch_size": batch_size, "seconds_median": round(med, 4), "seconds": [round(t, 4) for t in times],
            "samples_per_second": round((n0 + n) / med, 1)}


def run(*, engine_dir: Path | None = None, batch_sizes=(1, 8, 16, 32), n0: int = 10, n: int = 100,
        repeats: int = 3, backends=("torch-eager", "onnxruntime"), log=print) -> dict:
    from .data.phantom import HELD_OUT_SEEDS, make_phantom

    rows = []
    image = make_phantom(HELD_OUT_SEEDS[0]).image
    size = image.shape[-1]
    if "torch-eager" in backends:
        import torch

        from .runtime.backends.torch_eager import reference_backend
        from .zoo import bundled_model_dir

        for bs in batch_sizes:
            backend = reference_backend(bundled_model_dir(), 0.25, batch_size=bs)
            log(f"torch-eager batch {bs} (threads {torch.get_num_threads()})")
            rows.append(_row("torch-eager", "fp32", size, n0, n, bs, time_certify(backend, image, n0=n0, n=n,
                                                                                   repeats=repeats)))
    if "onnxruntime" in backends:
        from .runtime.segmenter import CertifiedSegmenter

        with tempfile.TemporaryDirectory() as tmp:
            if engine_dir is None:
                from .export.build import build_engine
                from .export.loaders import load_model_dir
                from .zoo import bundled_model_dir

                engine_dir = Path(tmp) / "engine"
                log("building an ONNX Runtime engine for the bundled model")
                build_engine(load_model_dir(bundled_model_dir()), 0.25, engine_dir,
                             batch_sizes=(1, 16, max(batch_sizes)), log=lambda m: None)
            for bs in batch_sizes:
                seg = CertifiedSegmenter.load(engine_dir, batch_size=bs)
                log(f"onnxruntime batch {bs}")
                rows.append(_row("onnxruntime", seg.manifest["precision"], size, n0, n, bs,
                                 time_certify(seg.backend, image, n0=n0, n=n, repeats=repeats)))
    return {"machine": machine(), "rows": rows, "summary": summarize(rows)}


def summarize(rows) -> dict:
    best = {}
    for r in rows:
        key = f"{r['backend']}:{r['precision']}"
        if key not in best or r["seconds_median"] < best[key]["seconds_median"]:
            best[key] = r
    out = {k: {"batch_size": v["batch_size"], "seconds_median": v["seconds_median"]} for k, v in best.items()}
    if "torch-eager:fp32" in best:
        base = best["torch-eager:fp32"]["seconds_median"]
        for k, v in out.items():
            v["speedup_vs_torch_eager"] = round(base / v["seconds_median"], 2)
    return out


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; torch {m.get('torch', '-')}, "
             f"onnxruntime {m.get('onnxruntime', '-')}, numpy {m.get('numpy', '-')}.", "",
             "| backend | precision | image | n0 + n | batch | seconds (median) | samples/s |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['image_size']}x{r['image_size']} | "
                     f"{r['n0']} + {r['n']} | {r['batch_size']} | {r['seconds_median']:.3f} | "
                     f"{r['samples_per_second']:.1f} |")
    lines.append("")
    for k, v in result["summary"].items():
        extra = f", {v['speedup_vs_torch_eager']}x torch eager" if "speedup_vs_torch_eager" in v else ""
        lines.append(f"- best {k}: batch {v['batch_size']}, {v['seconds_median']:.3f} s{extra}")
    return "\n".join(lines) + "\n"
