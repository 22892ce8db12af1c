"""A bench run: the rows the registries offer, engines built for them, each row timed in its own process,
and the summary (the fastest CPU path against the fastest careful PyTorch row).

Rows come from the registries, not from lists here: one engine row per registered builder and precision
(``export.builders.BUILDERS``; a builder that refuses a precision on this machine gives no row and the
result says why), one reference row per reference runner, precision and memory layout
(``runtime.backends.REFERENCES``), and the published loop.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import CertsegError
from .machine import machine, peak_for

GOAL_SPEEDUP = 1.4  # the fastest CPU engine against the fastest torch row, certified Dice within GOAL_DICE
GOAL_DICE_POINTS = 0.5


def row_name(row: dict) -> str:
    """'openvino:bf16', 'torch-eager:bf16:channels_last', 'reference-loop:fp32'."""
    name = f"{row['backend']}:{row['precision']}"
    return f"{name}:{row['layout']}" if row.get("kind") == "reference" else name


# ---------------------------------------------------------------------------------------------- the plan
def engine_rows(requested: list[str] | None, quick: bool) -> list[tuple[str, str]]:
    """(backend, precision) for each engine row: the requested 'backend:precision' items, or every builder's
    precisions (with --quick its QUICK_PRECISIONS where it has them)."""
    from ..export.builders import BUILDERS, builder

    if requested is None:
        return [(b, p) for b in BUILDERS
                for p in (getattr(builder(b), "QUICK_PRECISIONS", None) if quick else None) or builder(b).PRECISIONS]
    rows = []
    for item in requested:
        backend, _, precision = item.partition(":")
        if backend not in BUILDERS or precision not in builder(backend).PRECISIONS:
            raise CertsegError(f"--engines {item!r}: give BACKEND:PRECISION with a backend among "
                               f"{', '.join(BUILDERS)} and one of its precisions (e.g. openvino:bf16)")
        rows.append((backend, precision))
    return rows


def reference_rows(requested: list[str] | None, skipped: dict[str, str]) -> list[tuple[str, str, str]]:
    """(runner, precision, layout) for each reference row: the requested 'runner:precision:layout' items, or
    every reference runner with each of its precisions and layouts; those that cannot run here go to
    `skipped` (name -> why) instead."""
    from ..runtime.backends import REFERENCES, reference, reference_unavailable

    if requested is None:
        rows = [(r, p, layout) for r in REFERENCES for p in reference(r).PRECISIONS for layout in reference(r).LAYOUTS]
    else:
        rows = _requested_references(requested)
    why = {r: reference_unavailable(r) for r in dict.fromkeys(r for r, _, _ in rows)}  # in row order
    for r, reason in why.items():
        if reason is not None:
            skipped[r] = reason
    return [row for row in rows if why[row[0]] is None]


def _requested_references(requested: list[str]) -> list[tuple[str, str, str]]:
    from ..runtime.backends import REFERENCES, reference

    rows = []
    for item in requested:
        name, _, rest = item.partition(":")
        precision, _, layout = rest.partition(":")
        module = reference(name) if name in REFERENCES else None
        if module is None or precision not in module.PRECISIONS or (layout or "nchw") not in module.LAYOUTS:
            raise CertsegError(f"--references {item!r}: give RUNNER:PRECISION[:LAYOUT] with a runner among "
                               f"{', '.join(REFERENCES)} (e.g. torch-eager:bf16:channels_last)")
        rows.append((name, precision, layout or "nchw"))
    return rows


def unavailable_engines(rows: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The rows this machine can build, and for the others why not (one line per backend:precision)."""
    from ..export.build import check_request

    ok, skipped = [], {}
    for backend, precision in rows:
        try:
            check_request(backend, precision)
            ok.append((backend, precision))
        except CertsegError as e:
            skipped[f"{backend}:{precision}"] = str(e).splitlines()[0]
    return ok, skipped


def check_arguments(*, sizes, batch_sizes, repeats, engine_dir=None) -> None:
    """Refuse what the run would fail on later (after minutes of work), in one line each."""
    from ..manifest import load_manifest

    if not sizes or any(not 16 <= s <= 4096 or s % 8 for s in sizes):
        raise CertsegError(f"--sizes {','.join(map(str, sizes))}: image sides must be multiples of 8 in [16, 4096]")
    if not batch_sizes or min(batch_sizes) < 1:
        raise CertsegError(f"--batch-sizes {','.join(map(str, batch_sizes))}: batch sizes must be >= 1")
    if repeats < 1:
        raise CertsegError(f"--repeats {repeats} must be >= 1")
    if engine_dir is not None:
        m = load_manifest(engine_dir)
        if m["input"]["height"] != sizes[0] or m["input"]["width"] != sizes[0]:
            raise CertsegError(f"--engine {engine_dir} is {m['backend']} {m['precision']} at {m['input']['height']}x"
                               f"{m['input']['width']}; give an engine for the first size, {sizes[0]}")
        if not m["batch_sizes"]["min"] <= min(batch_sizes) <= max(batch_sizes) <= m["batch_sizes"]["max"]:
            raise CertsegError(f"--engine {engine_dir} takes batch sizes {m['batch_sizes']['min']}.."
                               f"{m['batch_sizes']['max']}, not all of {','.join(map(str, batch_sizes))}")


# ------------------------------------------------------------------------------------------------ a run
def row_in_subprocess(spec: dict) -> dict:
    r = subprocess.run([sys.executable, "-m", "certseg_rt.bench", json.dumps(spec)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"bench row {row_name(spec)} failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(*, sizes=(128, 256), ns=(100,), batch_sizes=(8, 16, 32), engines: list[str] | None = None,
        references: list[str] | None = None, repeats: int = 3, n0: int = 10, reference_loop: bool = True,
        engine_dir: Path | None = None, model: str = "chest", quick: bool = False, max_memory: int | None = None,
        gpu_only: bool = False, log=print) -> dict:
    """All rows.  The batch size is swept at the smallest n; larger n reuse the best one found there.
    gpu_only: the rows of GPU runners only (no reference loop, no CPU engines or torch rows)."""
    from ..runtime.backends import REFERENCES, RUNNERS
    from . import rows as row_kinds

    def on_gpu(name):
        entry = RUNNERS.get(name) or REFERENCES.get(name)
        return bool(entry and entry.gpu)

    check_arguments(sizes=sizes, batch_sizes=batch_sizes, repeats=repeats, engine_dir=engine_dir)
    wanted = engine_rows(engines, quick)
    if gpu_only:
        wanted = [(b, p) for b, p in wanted if RUNNERS[b].gpu]
        reference_loop = False
    buildable, skipped = unavailable_engines(wanted)
    torch_rows = [r for r in reference_rows(references, skipped) if REFERENCES[r[0]].gpu or not gpu_only]
    if gpu_only:
        skipped = {k: v for k, v in skipped.items() if on_gpu(k.split(":")[0])}
        if not buildable and not torch_rows:
            raise CertsegError("--gpu-only, but this machine has no GPU rows to run (" +
                               "; ".join(f"{k}: {v}" for k, v in skipped.items()) + "); run without --gpu-only")
    for name, why in skipped.items():
        log(f"no {name} rows: {why}")
    from ..export.build import build_engine
    from ..data.modalities import modality_for
    from ..export.loaders import load_model_dir, load_source
    from ..manifest import load_manifest
    from ..zoo import bundled_model_dir

    model = Path(model) if Path(model).is_dir() else bundled_model_dir(model)
    source = load_model_dir(model, denoiser=False)
    # The Dice column needs phantoms with masks: a real-data model (liver-ct) is timed and scored on the phantoms
    # of its channel count, whose Dice only compares backends with each other.
    modality = modality_for(source.channels, source.modality).name
    given = None if engine_dir is None else load_manifest(engine_dir)
    mach = machine()
    results, best_batch = [], {}  # best_batch: (size, row name) -> batch size
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            gflop = row_kinds.gflop_per_sample(model, size)
            built = {}  # (backend, precision) -> engine directory
            if given is not None and size == sizes[0]:  # the user's engine stands in for that row's build
                built[(given["backend"], given["precision"])] = Path(engine_dir)
            for backend, precision in buildable:
                if (backend, precision) in built:
                    continue
                path = Path(tmp) / f"engine-{size}-{backend}-{precision}"
                log(f"building {backend} {precision} engine at {size}x{size}")
                build_engine(load_source(model, image_size=(size, size)), row_kinds.SIGMA, path, backend=backend,
                             precision=precision, batch_sizes=(1, 16, max(batch_sizes)), log=lambda m: None)
                built[(backend, precision)] = path
            specs = [{"kind": "reference", "backend": r, "precision": p, "layout": layout}
                     for r, p, layout in torch_rows]
            specs += [{"kind": "engine", "backend": b, "precision": p, "engine": str(path)}
                      for (b, p), path in built.items()]
            for n in ns:
                base = {"image_size": size, "n0": n0, "n": n, "gflop_per_sample": gflop, "model": str(model),
                        "modality": modality, "repeats": repeats if n <= 100 else 1, "max_memory": max_memory}
                if reference_loop and n <= 100:
                    log(f"reference-loop {size}x{size} n={n}")
                    results.append(row_in_subprocess({**base, "kind": "reference-loop", "backend": "reference-loop",
                                                      "precision": "fp32", "batch_size": 1, "repeats": 1}))
                for spec in specs:
                    spec = {**base, **spec}
                    key = (size, row_name(spec))
                    if key not in best_batch:
                        best = None
                        if len(batch_sizes) > 1:  # timing only, to find the best batch size
                            for bs in batch_sizes:
                                log(f"{row_name(spec)} {size}x{size} n={n} batch {bs}")
                                row = row_in_subprocess({**spec, "batch_size": bs, "dice": False})
                                if best is None or row["seconds_median"] < best["seconds_median"]:
                                    best = row
                        best_batch[key] = best["batch_size"] if best else batch_sizes[0]
                    # The reported row: the best batch size, timed again with its certified Dice.
                    log(f"{row_name(spec)} {size}x{size} n={n} batch {best_batch[key]} (+ certified Dice)")
                    results.append(row_in_subprocess({**spec, "batch_size": best_batch[key]}))
    add_fractions(results, mach)
    return {"machine": mach, "model": model.name, "rows": results, "summary": summarize(results),
            "skipped": skipped}


def add_fractions(rows: list[dict], mach: dict) -> None:
    """Each CPU row's achieved GFLOP/s as a fraction of the peak of the precision it ran (GPU rows: none)."""
    from ..runtime.backends import REFERENCES, RUNNERS

    for row in rows:
        registry = RUNNERS if row.get("kind") == "engine" else REFERENCES
        gpu = registry.get(row["backend"]) is not None and registry[row["backend"]].gpu
        peak = None if gpu else peak_for(row["precision"])
        row["peak"] = peak
        gflops = mach["peak_gflops"].get(peak) if peak else None
        row["fraction_of_peak"] = round(row["gflops_per_second"] / gflops, 4) if gflops else None


def summarize(rows) -> dict:
    """Per image size and n: the fastest CPU engine against the fastest torch row (and the rest)."""
    from ..runtime.backends import REFERENCES, RUNNERS

    def on_gpu(r):
        registry = RUNNERS if r.get("kind") == "engine" else REFERENCES
        return r["backend"] in registry and registry[r["backend"]].gpu

    fastest = lambda rs: min(rs, key=lambda r: r["seconds_median"], default=None)
    out = {}
    for size in sorted({r["image_size"] for r in rows}):
        for n in sorted({r["n"] for r in rows}):
            sel = [r for r in rows if r["image_size"] == size and r["n"] == n]
            engine = fastest([r for r in sel if r.get("kind") == "engine" and not on_gpu(r)])
            torch_best = fastest([r for r in sel if r.get("kind") == "reference" and not on_gpu(r)])
            torch_fp32 = next((r for r in sel if row_name(r) == "torch-eager:fp32:nchw"), None)
            loop = next((r for r in sel if r.get("kind") == "reference-loop"), None)
            gpu = summarize_gpu([r for r in sel if on_gpu(r)])
            if engine is None:
                if gpu:  # GPU rows only (bench --gpu-only)
                    out[f"{size}x{size} n={n}"] = gpu
                continue
            entry = {"fastest": row_name(engine), "seconds": engine["seconds_median"],
                     "peak": engine.get("peak"), "fraction_of_peak": engine.get("fraction_of_peak")}
            if torch_best is not None:
                speedup = round(torch_best["seconds_median"] / engine["seconds_median"], 2)
                entry.update({"fastest_torch": row_name(torch_best), "torch_seconds": torch_best["seconds_median"],
                              "speedup_vs_fastest_torch": speedup})
            if torch_fp32 is not None:
                entry["speedup_vs_torch_fp32_nchw"] = round(torch_fp32["seconds_median"] / engine["seconds_median"], 2)
                if engine["certified_dice"] is not None and torch_fp32["certified_dice"] is not None:
                    entry["dice_points_vs_torch_fp32"] = round(100 * (engine["certified_dice"]
                                                                       - torch_fp32["certified_dice"]), 2)
            if "speedup_vs_fastest_torch" in entry and "dice_points_vs_torch_fp32" in entry:
                entry["goal"] = {"speedup": GOAL_SPEEDUP, "dice_points": GOAL_DICE_POINTS,
                                 "met": entry["speedup_vs_fastest_torch"] >= GOAL_SPEEDUP
                                 and abs(entry["dice_points_vs_torch_fp32"]) <= GOAL_DICE_POINTS}
            if loop is not None:
                entry["speedup_vs_reference_loop"] = round(loop["seconds_median"] / engine["seconds_median"], 1)
            entry.update(gpu)
            out[f"{size}x{size} n={n}"] = entry
    return out


def summarize_gpu(rows: list[dict]) -> dict:
    """The fastest GPU row against the PyTorch GPU baseline (torch-cuda eager, fp32 and bf16) where it ran, and
    the fused torch-cuda loop over eager per precision.  GPU rows are never compared with CPU rows."""
    if not rows:
        return {}
    best = min(rows, key=lambda r: r["seconds_median"])
    entry = {"fastest_gpu": row_name(best), "gpu_seconds": best["seconds_median"]}
    eager = {r["precision"]: r for r in rows if r["backend"] == "torch-cuda-eager"}
    for p in ("fp32", "bf16"):
        if p in eager:
            entry[f"gpu_speedup_vs_torch_cuda_eager_{p}"] = round(eager[p]["seconds_median"] / best["seconds_median"], 2)
    fused = {r["precision"]: round(eager[r["precision"]]["seconds_median"] / r["seconds_median"], 2)
             for r in rows if r["backend"] == "torch-cuda-fused" and r["precision"] in eager}
    if fused:
        entry["torch_cuda_fused_speedup_vs_eager"] = fused
    return entry
