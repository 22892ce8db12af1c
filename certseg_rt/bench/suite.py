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
from .gpu import summarize_gpu
from .machine import machine, peak_for

GOAL_SPEEDUP = 1.4  # the fastest CPU engine against the fastest torch row, certified Dice within GOAL_DICE
GOAL_DICE_POINTS = 0.5


def row_name(row: dict) -> str:
    """'openvino:bf16', 'torch-eager:bf16:channels_last', 'reference-loop:fp32', 'torch-cuda-fused:fp16:compiled'."""
    from .gpu import row_label

    return row_label(row)


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


def reference_rows(requested: list[str] | None, skipped: dict[str, str]) -> list[tuple]:
    """(runner, precision, layout) for each reference row, (runner, precision, layout, variant) for a variant's:
    the requested 'runner:precision[:layout|variant]' items, or every reference runner with each of its precisions
    and layouts, and its first variant (torch-cuda-fused:*:compiled; the others on request); those that cannot run
    here go to `skipped` (name -> why) instead."""
    from ..runtime.backends import REFERENCES, parse_reference, reference, reference_unavailable

    if requested is None:
        rows = [(r, p, layout) for r in REFERENCES for p in reference(r).PRECISIONS for layout in reference(r).LAYOUTS]
        rows += [(r, p, reference(r).LAYOUTS[0], entry.variants[0]) for r, entry in REFERENCES.items()
                 if entry.variants for p in reference(r).PRECISIONS]
    else:
        rows = []
        for item in requested:
            try:
                name, precision, layout, variant = parse_reference(item)
            except CertsegError as e:
                raise CertsegError(f"--references: {e}")
            rows.append((name, precision, layout) if variant is None else (name, precision, layout, variant))
    why = {r: reference_unavailable(r) for r in dict.fromkeys(row[0] for row in rows)}  # in row order
    for r, reason in why.items():
        if reason is not None:
            skipped[r] = reason
    return [row for row in rows if why[row[0]] is None]


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


def rows_in_subprocess(specs: list[dict]):
    """Several rows in one child, in turn (GPU rows: one CUDA context and model load; each row's memory is the
    device's own peak), yielded as each finishes.  A row that fails gives {"error": its one line} in its place; a
    child that dies gives that for the rows it did not reach."""
    child = subprocess.Popen([sys.executable, "-m", "certseg_rt.bench", json.dumps(specs)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    done = 0
    try:
        for line in child.stdout:
            if line.startswith("{"):
                done += 1
                yield json.loads(line)
        err = child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    died = (err.strip().splitlines() or [f"exit status {child.returncode}"])[-1][:200]
    for _ in range(len(specs) - done):
        yield {"error": f"the row's process ended ({died})"}


def run(*, sizes=(128, 256), ns=(100,), batch_sizes=(8, 16, 32), engines: list[str] | None = None,
        references: list[str] | None = None, repeats: int = 3, n0: int = 10, reference_loop: bool = True,
        engine_dir: Path | None = None, model: str = "chest", quick: bool = False, max_memory: int | None = None,
        gpu_only: bool = False, throughput: int = 0, on_rows=None, log=print) -> dict:
    """All rows.  The batch size is swept at the smallest n; larger n reuse the best one found there (CPU rows;
    GPU rows of one size and n run in one process at their device plan, ``gpu.py``).
    gpu_only: the rows of GPU runners only (no reference loop, no CPU engines or torch rows).
    throughput: images per throughput row of each GPU form at the first n (0: none).
    on_rows: called with the result so far after each row (or group of GPU rows)."""
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
            specs = [_reference_spec(row, on_gpu(row[0])) for row in torch_rows]
            # engine rows (TensorRT on a GPU included) keep a process of their own and the batch sweep: an engine's
            # batch is its build's range; the torch-cuda reference rows plan their own batches on the device
            specs += [{"kind": "engine", "backend": b, "precision": p, "engine": str(path)}
                      for (b, p), path in built.items()]
            for n in ns:
                base = {"image_size": size, "n0": n0, "n": n, "gflop_per_sample": gflop, "model": str(model),
                        "modality": modality, "repeats": repeats if n <= 100 else 1, "max_memory": max_memory}
                if reference_loop and n <= 100:
                    log(f"reference-loop {size}x{size} n={n}")
                    results.append(row_in_subprocess({**base, "kind": "reference-loop", "backend": "reference-loop",
                                                      "precision": "fp32", "batch_size": 1, "repeats": 1}))
                for spec in (s for s in specs if not s.get("gpu")):
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
                    _report(on_rows, mach, model, results, skipped)
                report = lambda: _report(on_rows, mach, model, results, skipped)  # noqa: E731
                # GPU rows: the device plan decides the batch; repeats at every n (a GPU certify at n = 1000 is short)
                gpu_specs = [{**base, **spec, "batch_size": None, "repeats": repeats} for spec in specs if spec.get("gpu")]
                _gpu_rows(gpu_specs, f"{size}x{size} n={n}", results, skipped, log, report)
                if throughput and gpu_specs and n == ns[0]:
                    _gpu_rows(throughput_specs(results, base, throughput), f"throughput {size}x{size} n={n}", results,
                              skipped, log, report)
    add_fractions(results, mach)
    return {"machine": mach, "model": model.name, "rows": results, "summary": summarize(results),
            "skipped": skipped}


def _reference_spec(row: tuple, gpu: bool) -> dict:
    spec = {"kind": "reference", "backend": row[0], "precision": row[1], "layout": row[2]}
    if len(row) > 3:
        spec["variant"] = row[3]
    if gpu:
        spec["gpu"] = True
    return spec


def _gpu_rows(specs: list[dict], what: str, results: list[dict], skipped: dict, log, report) -> None:
    """GPU rows of one size and n in one process (no batch sweep: a GPU runner's batch is its device plan);
    a row that fails is listed with its reason, the others stand."""
    if not specs:
        return
    log(f"GPU rows {what}: {', '.join(row_name(s) for s in specs)} (one process)")
    for spec, row in zip(specs, rows_in_subprocess(specs)):
        if "error" in row:
            name = f"{row_name(spec)} ({spec['kind']} {spec['image_size']}x{spec['image_size']} n={spec['n']})"
            skipped[name] = row["error"]
            log(f"no {name} row: {row['error']}")
        else:
            results.append(row)
            log(f"  {row_name(row)} {spec['kind']}: {row['seconds_median']:.4f} s")
        report()


def throughput_specs(results: list[dict], base: dict, images: int) -> list[dict]:
    """Throughput rows of this size and n: each GPU form's fastest latency row (eager, careful, fused, fused
    compiled), certifying `images` held-out phantoms."""
    from .gpu import CAREFUL, WEAK

    here = [r for r in results if r.get("gpu") and r.get("kind") == "reference" and r["image_size"] ==
            base["image_size"] and r["n"] == base["n"]]
    specs = []
    for form in (WEAK, CAREFUL, "torch-cuda-fused", "torch-cuda-fused:compiled"):
        backend, _, compiled = form.partition(":")
        mine = [r for r in here if r["backend"] == backend and bool(r.get("variant")) == bool(compiled)]
        if mine:
            best = min(mine, key=lambda r: r["seconds_median"])
            specs.append({**base, "kind": "throughput", "backend": backend, "precision": best["precision"],
                          "layout": best.get("layout") or "nchw", "images": images, "batch_size": None, "gpu": True,
                          "repeats": 1, **({"variant": best["variant"]} if best.get("variant") else {})})
    return specs


def _report(on_rows, mach, model, results, skipped) -> None:
    """The rows so far, for a caller that writes them as they come (an interrupted bench keeps them)."""
    if on_rows is not None:
        rows = [dict(r) for r in results]
        add_fractions(rows, mach)
        on_rows({"machine": mach, "model": model.name, "rows": rows, "summary": summarize(rows),
                 "skipped": dict(skipped), "partial": True})


def add_fractions(rows: list[dict], mach: dict) -> None:
    """Each CPU row's achieved GFLOP/s as a fraction of the peak of the precision it ran; GPU rows against the
    chip's peak and the model's forward-pass limit (gpu.add_gpu_fractions)."""
    from ..runtime.backends import REFERENCES, RUNNERS
    from .gpu import add_gpu_fractions

    for row in rows:
        registry = RUNNERS if row.get("kind") == "engine" else REFERENCES
        gpu = registry.get(row["backend"]) is not None and registry[row["backend"]].gpu
        peak = None if gpu else peak_for(row["precision"])
        row["peak"] = peak
        gflops = mach["peak_gflops"].get(peak) if peak else None
        row["fraction_of_peak"] = round(row["gflops_per_second"] / gflops, 4) if gflops else None
    add_gpu_fractions(rows)


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
            gpu = summarize_gpu([r for r in sel if on_gpu(r)])  # never against CPU rows
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
