"""Certify latency and quality per backend, precision, image size and batch size, in one run on one machine.

Rows (each measured in its own subprocess, so peak RSS is the row's own):

* ``reference-loop``: the published way: batch 1 torch eager, a Python loop of per-pixel
  ``scipy.stats.binomtest`` and statsmodels' Holm.
* ``torch-eager``: the torch reference backend, batched, at its best batch size; fp32, and bf16 (CPU
  autocast through oneDNN, AVX-512 BF16 / AMX) outside --quick.
* ``onnxruntime`` (fp32, int8): certseg-rt's CPU path: an engine directory, keyed noise and votes in the
  compiled extension, table-lookup statistics.
* ``tensorrt`` (fp32, fp16, bf16): certseg-rt's GPU path, when this machine can build and run TensorRT
  engines (tensorrt, cuda-python, a GPU and the extension's CUDA kernels); otherwise the result says why
  there are no such rows.
* ``torch-cuda-eager`` / ``torch-cuda-fused`` (fp32, fp16, bf16): the PyTorch GPU baseline (host noise and
  votes) and the fused device loop (CUDA noise and votes, CUDA graph), where torch sees a CUDA device.  On
  such a machine the summary compares the GPU rows with the eager GPU baseline (fp32 and bf16), never
  with CPU rows.

Each row: median seconds of whole CERTIFY calls (n0 + n samples, noise, inference, votes, statistics)
after a warm-up, samples/s, peak RSS, certified Dice on a fixed set of held-out phantoms, achieved
GFLOP/s and its fraction of the machine's estimated fp32 peak.  Used by ``certseg-rt bench``.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import __version__

DICE_PHANTOMS = 3  # fixed held-out phantoms for each row's certified Dice
ENGINE_BACKENDS = ("onnxruntime", "tensorrt")  # rows that certify an engine directory
TORCH_CUDA_BACKENDS = ("torch-cuda-eager", "torch-cuda-fused")  # rows of runtime.backends.torch_cuda, one per form
GPU_BACKENDS = ("tensorrt", *TORCH_CUDA_BACKENDS)  # rows timed on the GPU: no fraction of the CPU's peak


def peak_rss_mb() -> float:
    """This process's peak resident set size.  VmHWM belongs to the address space, so unlike ru_maxrss it
    does not inherit the parent's peak across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    cpu, mhz, flags = platform.processor() or "unknown", None, ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":  # more telling than platform.processor() ("x86_64")
                cpu = value.strip()
            elif key == "cpu MHz" and mhz is None:
                mhz = float(value)
            elif key == "flags" and not flags:
                flags = value
    except OSError:
        pass
    cores = os.cpu_count() or 1
    # fp32 FLOP per cycle per core: two FMA units x (16 lanes with AVX-512, 8 with AVX2) x 2 (multiply + add).
    per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags else 8
    info = {"cpu": cpu, "cores": cores, "mhz": mhz, "python": platform.python_version(), "certseg_rt": __version__,
            "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags.split()],
            "fp32_peak_gflops_estimate": round(cores * (mhz or 0) / 1000 * per_cycle, 1),
            "peak_assumption": f"{cores} cores x {mhz} MHz x {per_cycle} fp32 FLOP/cycle (2 FMA units)"}
    for mod in ("numpy", "torch", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    from ._ext_loader import EXTENSION_STATUS

    info["extension"] = EXTENSION_STATUS
    return info


def gflop_per_sample(model_dir: Path, size: int) -> float:
    """Multiply-adds x 2 of denoiser + segmenter on one sample, counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .export.loaders import load_model_dir

    src = load_model_dir(model_dir)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        src.denoise_segment(0.25, output="logits")(torch.rand(1, src.channels, size, size))
    return counter.get_total_flops() / 1e9


# ---------------------------------------------------------------------------------------- one row
def _reference_loop_certify(model, x, *, n0, n, tau, alpha, seed, sigma):
    """The published implementation's shape: one sample per forward pass, a per-pixel Python loop of tests."""
    import torch
    from scipy.stats import binomtest
    from statsmodels.stats.multitest import multipletests

    from .kernels import gaussian_noise
    from .stats import certified_radius

    C = model.num_classes
    H, W = x.shape[1:]

    def counts_of(num, offset):
        counts = np.zeros((C, H, W), np.int64)
        for i in range(num):
            eps = gaussian_noise(seed, offset + i, 1, x.size).reshape(x.shape)
            with torch.inference_mode():
                labels = model.net(torch.from_numpy(x + np.float32(sigma) * eps)[None])[0].numpy()
            for c in range(C):
                counts[c] += labels == c
        return counts

    counts0, counts = counts_of(n0, 0), counts_of(n, n0)
    cand = counts0.argmax(0)
    pvalues = np.empty(H * W)
    for p, (i, j) in enumerate(np.ndindex(H, W)):
        pvalues[p] = binomtest(int(counts[cand[i, j], i, j]), n, tau, alternative="greater").pvalue
    reject = multipletests(pvalues, alpha=alpha, method="holm")[0].reshape(H, W)
    return np.where(reject, cand, 255).astype(np.uint8), certified_radius(sigma, tau)


def run_row(spec: dict) -> dict:
    """Time one configuration (called in a fresh subprocess)."""
    from .certify import certify
    from .data import HELD_OUT_SEEDS
    from .data.modalities import get_modality
    from .metrics import mean_foreground_dice

    size, n0, n, repeats, bs = spec["image_size"], spec["n0"], spec["n"], spec["repeats"], spec["batch_size"]
    modality = get_modality(spec["modality"])
    images = [modality.make_phantom(HELD_OUT_SEEDS[700 + i], size) for i in range(DICE_PHANTOMS)]
    if spec["backend"] in ENGINE_BACKENDS:
        from .runtime.segmenter import CertifiedSegmenter

        backend = CertifiedSegmenter.load(spec["engine"], batch_size=bs).backend
        run = lambda x, seed: certify(backend, x, n0=n0, n=n, seed=seed).labels
    elif spec["backend"] in TORCH_CUDA_BACKENDS:
        from .runtime.backends import open_model

        backend = open_model("torch-cuda", Path(spec["model"]), 0.25, batch_size=bs, precision=spec["precision"],
                             form=spec["backend"].rsplit("-", 1)[1])
        run = lambda x, seed: certify(backend, x, n0=n0, n=n, seed=seed).labels
    else:
        from .runtime.backends.torch_eager import reference_backend

        backend = reference_backend(Path(spec["model"]), 0.25, batch_size=bs, precision=spec["precision"])
        if spec["backend"] == "reference-loop":
            class Net:  # what the loop needs: the DenoiseSegment module and the class count
                net, num_classes = backend.model, backend.num_classes
            run = lambda x, seed: _reference_loop_certify(Net, x, n0=n0, n=n, tau=0.75, alpha=0.001, seed=seed,
                                                          sigma=0.25)[0]
        else:
            run = lambda x, seed: certify(backend, x, n0=n0, n=n, seed=seed).labels
    # Warm-up (sessions, allocations, first-call dispatch); n <= 100 samples are enough for that.
    if spec["backend"] == "reference-loop":
        import torch

        with torch.inference_mode():
            backend.model(torch.from_numpy(images[0].image[None]))
    else:
        certify(backend, images[0].image, n0=n0, n=min(n, 100), seed=0)
    # The timed calls certify the Dice phantoms in turn (seed 100 + phantom), so their labels score the row
    # too; phantoms that no timed call reached are certified untimed.
    times, labels = [], {}
    for r in range(repeats):
        i = r % len(images)
        start = time.perf_counter()
        labels[i] = run(images[i].image, 100 + i)
        times.append(time.perf_counter() - start)
    dice = []
    if spec.get("dice", True):
        for i, ph in enumerate(images):
            got = labels[i] if i in labels else run(ph.image, 100 + i)
            dice.append(mean_foreground_dice(got, ph.mask, len(modality.classes)))
    med = statistics.median(times)
    flops = spec["gflop_per_sample"] * (n0 + n)
    return {"backend": spec["backend"], "precision": spec["precision"], "image_size": size, "n0": n0, "n": n,
            "batch_size": bs, "seconds_median": round(med, 4), "seconds": [round(t, 4) for t in times],
            "samples_per_second": round((n0 + n) / med, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "certified_dice": round(float(np.mean(dice)), 4) if dice else None,
            "gflops_per_second": round(flops / med, 1),
            **{k: v for k, v in getattr(backend, "record", {}).items() if k in ("device", "cuda_graph")}}


def _row_in_subprocess(spec: dict) -> dict:
    r = subprocess.run([sys.executable, "-m", "certseg_rt.bench", json.dumps(spec)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"bench row {spec['backend']} failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ a run
def check_arguments(*, sizes, batch_sizes, precisions, repeats, engine_dir=None) -> None:
    """Refuse what the run would fail on later (after minutes of work), in one line each."""
    from .errors import CertsegError
    from .manifest import load_manifest

    if not sizes or any(not 16 <= s <= 4096 or s % 8 for s in sizes):
        raise CertsegError(f"--sizes {','.join(map(str, sizes))}: image sides must be multiples of 8 in [16, 4096]")
    if not batch_sizes or min(batch_sizes) < 1:
        raise CertsegError(f"--batch-sizes {','.join(map(str, batch_sizes))}: batch sizes must be >= 1")
    unknown = sorted(set(precisions) - {"fp32", "int8"})
    if unknown or not precisions:
        raise CertsegError(f"--precisions: {', '.join(unknown) or 'none given'}; ONNX Runtime precisions are "
                           f"fp32, int8")
    if repeats < 1:
        raise CertsegError(f"--repeats {repeats} must be >= 1")
    if engine_dir is not None:
        m = load_manifest(engine_dir)
        if m["precision"] != "fp32" or m["input"]["height"] != sizes[0] or m["input"]["width"] != sizes[0]:
            raise CertsegError(f"--engine {engine_dir} is {m['precision']} at {m['input']['height']}x"
                               f"{m['input']['width']}; give an fp32 engine for the first size, {sizes[0]}")
        if not m["batch_sizes"]["min"] <= min(batch_sizes) <= max(batch_sizes) <= m["batch_sizes"]["max"]:
            raise CertsegError(f"--engine {engine_dir} takes batch sizes {m['batch_sizes']['min']}.."
                               f"{m['batch_sizes']['max']}, not all of {','.join(map(str, batch_sizes))}")


def _row_at_best_batch(spec: dict, batch_sizes, best_batch: dict, log) -> dict:
    """The reported row of one configuration: the batch size is swept once per (size, backend, precision), at
    the first n that reaches here (timing only), then the best one is timed again with its certified Dice."""
    name, precision = spec["backend"], spec["precision"]
    size, n = spec["image_size"], spec["n"]
    key = (size, name, precision)
    if key not in best_batch:
        best = None
        if len(batch_sizes) > 1:  # timing only, to find the best batch size
            for bs in batch_sizes:
                log(f"{name} {precision} {size}x{size} n={n} batch {bs}")
                row = _row_in_subprocess({**spec, "batch_size": bs, "dice": False})
                if best is None or row["seconds_median"] < best["seconds_median"]:
                    best = row
        best_batch[key] = best["batch_size"] if best else batch_sizes[0]
    bs = best_batch[key]
    log(f"{name} {precision} {size}x{size} n={n} batch {bs} (+ certified Dice)")
    return _row_in_subprocess({**spec, "batch_size": bs})


def torch_cuda_unavailable() -> str | None:
    """None when torch-cuda rows can run here (torch sees a CUDA device, the CUDA kernels exist); else why not."""
    from .errors import CertsegError

    try:
        from .runtime.backends.torch_cuda import require_cuda
    except ImportError as e:
        return f"torch is not importable ({e})"
    try:
        require_cuda(kernels=True)
    except CertsegError as e:
        return str(e).splitlines()[0]
    return None


def torch_cuda_rows(base: dict, *, precisions, batch_sizes, best_batch: dict, log) -> list[dict]:
    """The torch-cuda rows of one image size and n: eager (the PyTorch GPU baseline) and fused, each precision."""
    return [_row_at_best_batch({**base, "backend": name, "precision": precision, "engine": ""}, batch_sizes,
                               best_batch, log)
            for precision in precisions for name in TORCH_CUDA_BACKENDS]


def tensorrt_unavailable() -> str | None:
    """None when TensorRT engines can be built and run here; otherwise why not, in one line."""
    from .errors import CertsegError
    from .export.build import check_request

    try:
        check_request("tensorrt", "fp16")
    except CertsegError as e:
        return str(e).splitlines()[0]
    return None


def run(*, sizes=(128, 256), ns=(100,), batch_sizes=(8, 16, 32), precisions=("fp32", "int8"), repeats: int = 3,
        n0: int = 10, reference: bool = True, engine_dir: Path | None = None, model: str = "chest",
        torch_precisions=("fp32",), tensorrt_precisions=("fp32", "fp16", "bf16"), torch_cuda_precisions=(),
        cpu_rows: bool = True, log=print) -> dict:
    """All rows.  The batch size is swept at the smallest n; larger n reuse the best one found there.
    cpu_rows=False: the GPU rows only (no reference loop, CPU torch or ONNX Runtime rows)."""
    check_arguments(sizes=sizes, batch_sizes=batch_sizes, precisions=precisions, repeats=repeats,
                    engine_dir=engine_dir)
    tensorrt_skipped = tensorrt_unavailable() if tensorrt_precisions else "not requested"
    if tensorrt_skipped:
        log(f"no TensorRT rows: {tensorrt_skipped}")
        tensorrt_precisions = ()
    torch_cuda_skipped = torch_cuda_unavailable() if torch_cuda_precisions else "not requested"
    if torch_cuda_skipped:
        log(f"no torch-cuda rows: {torch_cuda_skipped}")
        torch_cuda_precisions = ()
    if not cpu_rows:
        if tensorrt_skipped and torch_cuda_skipped:
            from .errors import CertsegError

            raise CertsegError(f"--gpu-only, but this machine has no GPU rows to run (torch-cuda: {torch_cuda_skipped}; "
                               f"TensorRT: {tensorrt_skipped}); run without --gpu-only")
        precisions, torch_precisions, reference = (), (), False
    from .export.build import build_engine
    from .export.loaders import load_model_dir, load_source
    from .zoo import bundled_model_dir

    model = Path(model) if Path(model).is_dir() else bundled_model_dir(model)
    modality = load_model_dir(model, denoiser=False).modality or "chest"
    mach = machine()
    rows = []
    best_batch = {}  # (size, backend, precision) -> batch size
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            gflop = gflop_per_sample(model, size)
            engines = {}  # "backend:precision" -> engine directory
            for backend, precision in (*(("onnxruntime", p) for p in precisions),
                                       *(("tensorrt", p) for p in tensorrt_precisions)):
                if engine_dir is not None and size == sizes[0] and (backend, precision) == ("onnxruntime", "fp32"):
                    engines[f"{backend}:{precision}"] = Path(engine_dir)
                    continue
                path = Path(tmp) / f"engine-{size}-{backend}-{precision}"
                log(f"building {backend} {precision} engine at {size}x{size}")
                build_engine(load_source(model, image_size=(size, size)), 0.25, path, backend=backend,
                             precision=precision, batch_sizes=(1, 16, max(batch_sizes)), log=lambda m: None)
                engines[f"{backend}:{precision}"] = path
            for n in ns:
                base = {"image_size": size, "n0": n0, "n": n, "gflop_per_sample": gflop, "model": str(model),
                        "modality": modality,
                        "repeats": repeats if n <= 100 else 1}
                if reference and n <= 100:
                    log(f"reference-loop {size}x{size} n={n}")
                    rows.append(_row_in_subprocess({**base, "backend": "reference-loop", "precision": "fp32",
                                                    "batch_size": 1, "repeats": 1}))
                for backend in (*(f"torch-eager:{p}" for p in torch_precisions), *engines):
                    name, _, precision = backend.partition(":")
                    spec = {**base, "backend": name, "precision": precision, "engine": str(engines.get(backend, ""))}
                    rows.append(_row_at_best_batch(spec, batch_sizes, best_batch, log))
                rows.extend(torch_cuda_rows(base, precisions=torch_cuda_precisions, batch_sizes=batch_sizes,
                                            best_batch=best_batch, log=log))
    peak = mach["fp32_peak_gflops_estimate"]
    for row in rows:  # the peak is the CPU's: a GPU row has no fraction of it
        row["fraction_of_fp32_peak"] = round(row["gflops_per_second"] / peak, 3) \
            if peak and row["backend"] not in GPU_BACKENDS else None
    return {"machine": mach, "model": model.name, "rows": rows, "summary": summarize(rows),
            "tensorrt": {"rows": not tensorrt_skipped, "skipped_because": tensorrt_skipped},
            "torch_cuda": {"rows": not torch_cuda_skipped, "skipped_because": torch_cuda_skipped}}


def summarize(rows) -> dict:
    out = {}
    for size in sorted({r["image_size"] for r in rows}):
        for n in sorted({r["n"] for r in rows}):
            sel = {f"{r['backend']}:{r['precision']}": r for r in rows if r["image_size"] == size and r["n"] == n}
            eager = sel.get("torch-eager:fp32")
            ref = sel.get("reference-loop:fp32")
            fastest = min((r for k, r in sel.items() if k.startswith("onnxruntime")),
                          key=lambda r: r["seconds_median"], default=None)
            gpu = summarize_gpu(sel)
            if fastest is None:
                if gpu:  # GPU rows only (bench --gpu-only)
                    out[f"{size}x{size} n={n}"] = gpu
                continue
            entry = {"fastest": f"onnxruntime:{fastest['precision']}", "seconds": fastest["seconds_median"], **gpu}
            if eager:
                entry["speedup_vs_torch_eager"] = round(eager["seconds_median"] / fastest["seconds_median"], 2)
                if fastest["certified_dice"] is not None and eager["certified_dice"] is not None:
                    entry["dice_points_vs_torch_eager"] = round(100 * (fastest["certified_dice"]
                                                                       - eager["certified_dice"]), 2)
            if ref:
                entry["speedup_vs_reference_loop"] = round(ref["seconds_median"] / fastest["seconds_median"], 1)
            out[f"{size}x{size} n={n}"] = entry
    return out


def summarize_gpu(sel: dict) -> dict:
    """The fastest GPU row, set against the PyTorch GPU baseline (torch-cuda eager, fp32 and bf16) when it ran;
    and fused over eager per precision.  GPU rows are never compared with CPU rows."""
    gpu = {k: r for k, r in sel.items() if r["backend"] in GPU_BACKENDS}
    if not gpu:
        return {}
    key, fastest = min(gpu.items(), key=lambda kv: kv[1]["seconds_median"])
    entry = {"fastest_gpu": key, "gpu_seconds": fastest["seconds_median"]}
    for p in ("fp32", "bf16"):
        base = sel.get(f"torch-cuda-eager:{p}")
        if base is not None:
            entry[f"gpu_speedup_vs_torch_cuda_eager_{p}"] = round(base["seconds_median"] / fastest["seconds_median"], 2)
    fused = {}
    for r in gpu.values():
        eager = sel.get(f"torch-cuda-eager:{r['precision']}")
        if r["backend"] == "torch-cuda-fused" and eager is not None:
            fused[r["precision"]] = round(eager["seconds_median"] / r["seconds_median"], 2)
    if fused:
        entry["torch_cuda_fused_speedup_vs_eager"] = fused
    return entry


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Model: bundled {result.get('model', 'chest')}.  Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}); estimated fp32 peak "
             f"{m['fp32_peak_gflops_estimate']} GFLOP/s ({m['peak_assumption']}); torch {m.get('torch', '-')}, "
             f"onnxruntime {m.get('onnxruntime', '-')}, extension {m['extension']}.", "",
             "| backend | precision | image | n0 + n | batch | seconds (median) | samples/s | peak RSS MB | "
             "certified Dice | GFLOP/s | of peak |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    devices = sorted({r["device"] for r in result["rows"] if r.get("device")})
    if devices:
        lines[1:1] = ["", f"GPU (torch-cuda rows): {', '.join(devices)}."]
    for r in result["rows"]:
        dice = "-" if r["certified_dice"] is None else f"{r['certified_dice']:.3f}"
        frac = "-" if r.get("fraction_of_fp32_peak") is None else f"{r['fraction_of_fp32_peak']:.1%}"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['image_size']}x{r['image_size']} | {r['n0']} + {r['n']} "
                     f"| {r['batch_size']} | {r['seconds_median']:.3f} | {r['samples_per_second']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {dice} | {r['gflops_per_second']:.1f} | {frac} |")
    lines.append("")
    for k, v in result["summary"].items():
        if "fastest" not in v:  # GPU rows only
            lines.append(f"- {k}: {_gpu_summary_text(v)}")
            continue
        lines.append(f"- {k}: fastest {v['fastest']} {v['seconds']:.3f} s" +
                     (f", {v['speedup_vs_torch_eager']}x torch eager" if "speedup_vs_torch_eager" in v else "") +
                     (f" ({v['dice_points_vs_torch_eager']:+.2f} Dice points)" if "dice_points_vs_torch_eager" in v
                      else "") +
                     (f", {v['speedup_vs_reference_loop']}x the reference loop" if "speedup_vs_reference_loop" in v
                      else "") +
                     (f"; {_gpu_summary_text(v)}" if "fastest_gpu" in v else ""))
    skipped = result.get("tensorrt", {}).get("skipped_because")
    if skipped:
        lines.append(f"- no TensorRT rows: {skipped}")
    skipped = result.get("torch_cuda", {}).get("skipped_because")
    if skipped and skipped != "not requested":
        lines.append(f"- no torch-cuda rows: {skipped}")
    return "\n".join(lines) + "\n"


def _gpu_summary_text(v: dict) -> str:
    text = f"GPU: {v['fastest_gpu']} {v['gpu_seconds']:.3f} s"
    for p in ("fp32", "bf16"):
        if f"gpu_speedup_vs_torch_cuda_eager_{p}" in v:
            text += f", {v[f'gpu_speedup_vs_torch_cuda_eager_{p}']}x torch-cuda eager {p}"
    if "torch_cuda_fused_speedup_vs_eager" in v:
        ratios = v["torch_cuda_fused_speedup_vs_eager"]
        text += "; fused over eager: " + ", ".join(f"{p} {x}x" for p, x in ratios.items())
    return text


if __name__ == "__main__":  # one row, in a subprocess of run()
    print(json.dumps(run_row(json.loads(sys.argv[1]))))
