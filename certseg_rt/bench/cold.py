"""``certseg-rt bench --cold``: what one certify costs end to end, a whole process at a time, against the careful
PyTorch user's one-shot script run the same way.

Per image size, on an engine built with ``--precision auto`` (or the one given), in paired rounds (every kind of
process once per round, in turn, so that load from other processes falls on all of them):

* one-shot processes, wall time from spawn to exit: ``certseg-rt certify IMAGE --engine DIR --out MASK`` with an
  empty compiled-model cache (a fresh ``CERTSEG_CACHE_DIR``: the first run) and with that cache filled (every
  later run); ``certseg-run DIR IMAGE --out MASK`` likewise (where the program is built); and
  ``python torch_oneshot.py IMAGE MODEL`` (``bench/torch_oneshot.py``: import torch and diffusers, load the model,
  110 forward passes in one batch at bf16 with channels_last, votes; no statistics, nothing written);
* inside a process: a fresh ``CertifiedSegmenter.load`` of the cached engine, then its first certify and two more
  (warm), each round, alternating with warm passes of the torch script kept loaded in its own process.

Reported: medians, and per round the ratios (torch / certseg-rt), whose median is the paired figure.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TORCH_SCRIPT = Path(__file__).with_name("torch_oneshot.py")
ENGINE_WORKER = r"""
import json, sys, time
start = time.perf_counter()
from certseg_rt.io import read_image
from certseg_rt.runtime.segmenter import CertifiedSegmenter
n0, n, threads = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) or None
seg = CertifiedSegmenter.load(sys.argv[1], calls=(n0, n), threads=threads)
x = read_image(sys.argv[2], seg.channels)
print(json.dumps({"load_seconds": time.perf_counter() - start, "cache_hits": seg.backend.cache.hits}), flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    seg.certify(x, n0=n0, n=n, seed=int(line))
    print(time.perf_counter() - start, flush=True)
"""
ONESHOT_ROWS = ("certseg-rt certify, empty cache", "certseg-rt certify, cached", "certseg-run, empty cache",
                "certseg-run, cached", "torch one-shot script")


def certseg_rt_command() -> list[str]:
    """The installed ``certseg-rt`` program of this Python."""
    beside = Path(sys.executable).with_name("certseg-rt")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "certseg_rt.cli"]


def find_certseg_run(given: Path | None) -> tuple[Path | None, str | None]:
    """(the certseg-run program, None) or (None, why its rows are left out)."""
    path = given or (shutil.which("certseg-run") and Path(shutil.which("certseg-run")))
    if path is None:
        return None, ("certseg-run is not built here: build it (README, Embedding in C and C++) and pass "
                      "--certseg-run build/native/runtime/certseg-run")
    if not Path(path).is_file() or not os.access(path, os.X_OK):
        return None, f"--certseg-run {path} is not an executable file"
    return Path(path), None


def wall(command: list, env: dict) -> float:
    """Seconds from spawning ``command`` to its exit (which must be 0)."""
    start = time.perf_counter()
    r = subprocess.run([str(c) for c in command], env={**os.environ, **env}, capture_output=True, text=True,
                       check=False)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"{Path(str(command[0])).name} failed: {last}")
    return seconds


def _median(values):
    return round(statistics.median(values), 4) if values else None


def oneshot_rounds(engine: Path, image: Path, model_dir: Path, tmp: Path, rounds: int, certseg_run: Path | None,
                   log, n0: int = 10, n: int = 100, threads: int | None = None) -> dict:
    """Wall seconds of each one-shot process kind, ``rounds`` paired rounds."""
    times = {row: [] for row in ONESHOT_ROWS}
    mask = tmp / "mask.png"
    samples = ["--n0", n0, "--n", n] + (["--threads", threads] if threads else [])
    for r in range(rounds):
        log(f"  one-shot round {r + 1}/{rounds}")
        cache = {"CERTSEG_CACHE_DIR": str(tmp / f"cache-python-{r}")}
        command = [*certseg_rt_command(), "certify", image, "--engine", engine, "--out", mask, *samples]
        times["certseg-rt certify, empty cache"].append(wall(command, cache))
        times["certseg-rt certify, cached"].append(wall(command, cache))
        if certseg_run is not None:
            cache = {"CERTSEG_CACHE_DIR": str(tmp / f"cache-native-{r}")}
            command = [certseg_run, engine, image, "--out", mask, *samples]
            times["certseg-run, empty cache"].append(wall(command, cache))
            times["certseg-run, cached"].append(wall(command, cache))
        times["torch one-shot script"].append(wall([sys.executable, TORCH_SCRIPT, image, model_dir, "--samples",
                                                    n0 + n] + (["--threads", threads] if threads else []), {}))
    torch_times = times["torch one-shot script"]
    rows = {}
    for row, t in times.items():
        if not t:
            continue
        rows[row] = {"seconds_median": _median(t), "seconds": [round(v, 4) for v in t],
                     "torch_over_this_paired": _median([a / b for a, b in zip(torch_times, t)])}
    return rows


def warm_rounds(engine: Path, image: Path, model_dir: Path, cache: Path, rounds: int, log, n0: int = 10,
                n: int = 100, threads: int | None = None) -> dict:
    """Per round: a fresh process opens the cached engine and certifies three times (the first, then warm),
    alternating with warm (n0 + n)-sample passes of the torch script, loaded once in its own process."""
    env = {**os.environ, "CERTSEG_CACHE_DIR": str(cache)}
    torch = subprocess.Popen([sys.executable, str(TORCH_SCRIPT), str(image), str(model_dir), "--warm", "1",
                              "--samples", str(n0 + n), "--serve", *(["--threads", str(threads)] if threads else [])],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if torch.stdout.readline().strip() != "ready":
        raise RuntimeError("the torch script did not start")

    def torch_pass(seed):
        torch.stdin.write(f"{seed}\n")
        torch.stdin.flush()
        return float(torch.stdout.readline())

    loads, firsts, warms, torch_warm, ratios_first, ratios_torch = [], [], [], [], [], []
    try:
        for r in range(rounds):
            log(f"  in-process round {r + 1}/{rounds}")
            worker = subprocess.Popen([sys.executable, "-c", ENGINE_WORKER, str(engine), str(image), str(n0), str(n),
                                       str(threads or 0)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True)
            opened = json.loads(worker.stdout.readline())
            if opened["cache_hits"] < 2:
                raise RuntimeError(f"the engine's compiled models were not in the cache ({opened})")
            loads.append(opened["load_seconds"])
            certify, passes = [], []
            for i in range(3):
                worker.stdin.write(f"{i}\n")
                worker.stdin.flush()
                certify.append(float(worker.stdout.readline()))
                if i < 2:
                    passes.append(torch_pass(100 * r + i))
            worker.stdin.close()
            worker.wait()
            firsts.append(certify[0])
            warms += certify[1:]
            torch_warm += passes
            warm = statistics.median(certify[1:])
            ratios_first.append(certify[0] / warm)
            ratios_torch.append(statistics.median(passes) / warm)
    finally:
        torch.stdin.close()
        torch.wait()
    return {"load_seconds_median": _median(loads), "first_certify_seconds_median": _median(firsts),
            "warm_certify_seconds_median": _median(warms), "first_over_warm_paired": _median(ratios_first),
            "torch_warm_pass_seconds_median": _median(torch_warm), "torch_warm_over_warm_certify_paired":
                _median(ratios_torch), "first_certify_seconds": [round(v, 4) for v in firsts],
            "warm_certify_seconds": [round(v, 4) for v in warms], "torch_warm_pass_seconds":
                [round(v, 4) for v in torch_warm]}


def run(*, sizes=(128, 256), rounds: int = 5, engine_dir: Path | None = None, certseg_run: Path | None = None,
        model: str = "chest", n0: int = 10, n: int = 100, threads: int | None = None, log=print) -> dict:
    """The cold-start rows of every size (an ``--engine`` stands in for the first size's auto build); every
    process certifies (or, torch, runs) n0 + n samples, on ``threads`` threads (default: each library's own)."""
    import numpy as np

    from ..data import HELD_OUT_SEEDS
    from ..data.modalities import modality_for
    from ..export.build import build_engine
    from ..export.loaders import load_model_dir, load_source
    from ..io import write_png
    from ..manifest import load_manifest
    from ..zoo import bundled_model_dir
    from .machine import machine

    model_dir = Path(model) if Path(model).is_dir() else bundled_model_dir(model)
    program, skipped = find_certseg_run(certseg_run)
    out = {"machine": machine(), "model": model_dir.name, "rounds": rounds, "n0": n0, "n": n, "threads": threads,
           "sizes": {}, "load_average": {"start": [round(v, 2) for v in os.getloadavg()]},
           "skipped": {"certseg-run": skipped} if skipped else {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for k, size in enumerate(sizes):
            engine = Path(engine_dir) if engine_dir is not None and k == 0 else tmp / f"engine-{size}"
            if not (engine / "manifest.json").is_file():
                log(f"building an openvino engine at {size}x{size} with --precision auto")
                build_engine(load_source(model_dir, image_size=(size, size)), 0.25, engine, backend="openvino",
                             precision="auto", log=log)
            manifest = load_manifest(engine)
            source = load_model_dir(model_dir, denoiser=False)
            image = tmp / f"scan-{size}.png"
            pixels = modality_for(source.channels, source.modality).make_phantom(HELD_OUT_SEEDS[800], size).image
            rgb = (np.moveaxis(pixels, 0, -1) * 255).round().astype(np.uint8)
            write_png(image, rgb[..., 0] if rgb.shape[-1] == 1 else rgb)
            log(f"{size}x{size}: one-shot processes ({rounds} paired rounds)")
            oneshot = oneshot_rounds(engine, image, model_dir, tmp, rounds, program, log, n0, n, threads)
            log(f"{size}x{size}: first and warm certify in a process, and warm torch passes")
            warm = warm_rounds(engine, image, model_dir, tmp / "cache-python-0", rounds, log, n0, n, threads)
            out["sizes"][f"{size}x{size}"] = {
                "engine": {"backend": manifest["backend"], "precision": manifest["precision"],
                           "precision_choice": manifest.get("precision_choice"), "dir": None if engine.parent == tmp
                           else str(engine)},
                "oneshot": oneshot, "in_process": warm}
    out["load_average"]["end"] = [round(v, 2) for v in os.getloadavg()]
    return out


def to_markdown(result: dict) -> str:
    m = result["machine"]
    threads = f", {result['threads']} thread(s) each" if result.get("threads") else ""
    lines = [f"Cold start, model {result['model']}: {m['cpu']}, {m['cores']} cores{threads}; {result['rounds']} paired "
             f"rounds (medians; ratios are the medians of the per-round ratios); load average (1, 5, 15 min) "
             f"{result['load_average']['start']} at the start, {result['load_average'].get('end')} at the end.", ""]
    for size, r in result["sizes"].items():
        e = r["engine"]
        choice = e.get("precision_choice")
        picked = f"openvino {e['precision']}"
        if choice:
            picked += " (picked by --precision auto: " + ", ".join(
                f"{c['precision']} {c['seconds']:.3f} s{'' if c['passed'] else ' failed parity'}"
                for c in choice["candidates"]) + ")"
        lines += [f"**{size}**, engine {picked}", "",
                  "| whole process | seconds (median) | torch script / this (paired) |", "|---|---|---|"]
        for row, v in r["oneshot"].items():
            lines.append(f"| {row} | {v['seconds_median']:.3f} | {v['torch_over_this_paired']:.2f}x |")
        w = r["in_process"]
        lines += ["", f"In a process whose engine is cached: load {w['load_seconds_median']:.3f} s, first certify "
                      f"{w['first_certify_seconds_median']:.3f} s, warm certify "
                      f"{w['warm_certify_seconds_median']:.3f} s "
                      f"(first / warm {w['first_over_warm_paired']:.3f}, paired); torch's {result['n0'] + result['n']} "
                      f"warm forward passes "
                      f"{w['torch_warm_pass_seconds_median']:.3f} s = {w['torch_warm_over_warm_certify_paired']:.2f}x "
                      f"the warm certify (paired).", ""]
    for what, why in result["skipped"].items():
        lines.append(f"- no {what} rows: {why}")
    return "\n".join(lines) + "\n"
