"""The bench's GPU rows: the chip's peaks, the forward-pass limit, a row's GPU extras, the GPU summary and its text.

Rows of GPU runners (``runtime.backends``: torch-cuda careful, eager, fused and its compiled variants; TensorRT)
of one image size and n run in one process (one CUDA context and model load; compile caches shared), each row
with the device's peak memory of its own.  Every GPU row reports two fractions:

* **of the chip's peak**: achieved FLOP/s against NVIDIA's data-sheet peak of the precision the row ran, dense
  (no 2:4 sparsity): fp16/bf16 tensor cores; fp32 (IEEE, TF32 off) the CUDA cores' FMA rate (``GPU_PEAKS``; a GPU
  not in the table gets none, and the table says so);
* **of the forward-pass limit**: the time the bundled DenoiseSegment's forward passes alone take for the row's
  n0 + n samples (no noise, no votes, no copies), replayed as a CUDA graph at the row's batch and precision
  (measured in the fused row's process, ``forward_ms_per_sample``), over the row's time: 1.0 means the certify
  costs no more than the model; a compiled row can pass 1.0, since it runs a faster model.

The summary sets the project's fastest GPU row (fused, compiled, TensorRT) against the **fastest careful row**
(``torch-cuda-careful``: all samples in one batch, device noise, autocast, device counts); the eager row stays,
labelled as the weak baseline of the earlier measurements.  Goals (issue 21): >= 1.5x the fastest careful row at
every size with certified Dice within 0.5 points of torch fp32, <= 6 ms per 128x128 certify, >= 200 images/s.
"""
from __future__ import annotations

# NVIDIA data sheets, dense TFLOP/s: (name fragment, {precision: peak}); first match wins (more specific first).
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("H200 NVL", {"fp32": 60.0, "fp16": 835.5, "bf16": 835.5}),
    ("H200", {"fp32": 66.9, "fp16": 989.5, "bf16": 989.5}),  # SXM, as H100 SXM
    ("H100 NVL", {"fp32": 60.0, "fp16": 835.5, "bf16": 835.5}),
    ("H100 PCIe", {"fp32": 51.2, "fp16": 756.5, "bf16": 756.5}),
    ("H100", {"fp32": 66.9, "fp16": 989.5, "bf16": 989.5}),  # "NVIDIA H100 80GB HBM3": SXM
    ("A100", {"fp32": 19.5, "fp16": 312.0, "bf16": 312.0}),
    ("L40S", {"fp32": 91.6, "fp16": 362.1, "bf16": 362.1}),
    ("L4", {"fp32": 30.3, "fp16": 121.0, "bf16": 121.0}),
]
PEAK_SOURCE = "NVIDIA data sheets, dense (no sparsity): fp16/bf16 tensor cores, fp32 CUDA-core FMA (TF32 off)"

GOAL_SPEEDUP = 1.5  # the fastest project GPU row against the fastest careful row, at every size
GOAL_DICE_POINTS = 0.5
GOAL_SECONDS_128 = 0.006  # one 128x128 certify (n0 10 + n 100)
GOAL_IMAGES_PER_SECOND_128 = 200.0
PROJECT = ("torch-cuda-fused", "tensorrt")  # the project's GPU paths (the others are baselines)
CAREFUL, WEAK = "torch-cuda-careful", "torch-cuda-eager"


def gpu_peak(device: str | None, precision: str) -> float | None:
    """TFLOP/s of `precision` on this GPU (None: not in GPU_PEAKS)."""
    for fragment, peaks in GPU_PEAKS:
        if device and fragment.lower() in device.lower():
            return peaks.get(precision)
    return None


def row_label(row: dict) -> str:
    """'torch-cuda-fused:fp16:compiled', 'torch-cuda-careful:bf16:channels_last', 'tensorrt:fp16'."""
    name = f"{row['backend']}:{row['precision']}"
    if row.get("variant"):
        return f"{name}:{row['variant']}"
    return f"{name}:{row['layout']}" if row.get("kind") in ("reference", "throughput") else name


def add_gpu_fractions(rows: list[dict]) -> None:
    """fraction_of_peak (chip) and of_forward_limit on every GPU row; forward limits come from the fused rows of the
    same size, n0 + n and precision (uncompiled: the model as the user gave it)."""
    limits = {(r["image_size"], r["n0"], r["n"], r["precision"]): r["forward_ms_per_sample"]
              for r in sorted(rows, key=lambda r: not r.get("variant")) if r.get("forward_ms_per_sample")}
    for r in rows:
        if not r.get("gpu"):
            continue
        peak = gpu_peak(r.get("device"), r["precision"])
        r["peak"] = f"{r['precision']} {peak} TFLOP/s" if peak else None
        r["fraction_of_peak"] = round(r["gflops_per_second"] / (peak * 1000), 4) if peak else None
        forward = limits.get((r["image_size"], r["n0"], r["n"], r["precision"]))
        limit = forward * (r["n0"] + r["n"]) / 1000 if forward else None
        r["forward_limit_seconds"] = round(limit, 5) if limit else None
        r["of_forward_limit"] = round(limit / r["seconds_median"], 3) if limit and r["seconds_median"] else None


def summarize_gpu(rows: list[dict]) -> dict:
    """Per size and n (GPU rows only): the project's fastest GPU row against the fastest careful row (the goal), the
    weak eager row, fused over eager per precision, throughput rows.  Never against CPU rows; its keys never
    collide with the CPU summary's (the two share an entry where a run has both)."""
    latency = [r for r in rows if r.get("kind") != "throughput"]
    if not latency:
        return {}

    def fastest(rs):
        return min(rs, key=lambda r: r["seconds_median"], default=None)

    best = fastest(latency)
    entry = {"fastest_gpu": row_label(best), "gpu_seconds": best["seconds_median"]}
    project = fastest([r for r in latency if r["backend"] in PROJECT])
    careful = fastest([r for r in latency if r["backend"] == CAREFUL])
    fp32 = next((r for r in latency if r["backend"] == CAREFUL and r["precision"] == "fp32"
                 and r.get("layout") == "nchw"), None) or \
        next((r for r in latency if r["backend"] == WEAK and r["precision"] == "fp32"), None)
    if project is not None:
        entry.update({"fastest_project_gpu": row_label(project), "project_seconds": project["seconds_median"]})
    if project is not None and careful is not None:
        entry.update({"fastest_careful": row_label(careful), "careful_seconds": careful["seconds_median"],
                      "speedup_vs_fastest_careful": round(careful["seconds_median"] / project["seconds_median"], 2)})
        if fp32 is not None and project.get("certified_dice") is not None and fp32.get("certified_dice") is not None:
            points = 100 * (project["certified_dice"] - fp32["certified_dice"])
            entry["gpu_dice_points_vs_torch_fp32"] = round(points, 2)
            entry["gpu_torch_fp32"] = row_label(fp32)
        if "gpu_dice_points_vs_torch_fp32" in entry:
            entry["gpu_goal"] = {"speedup": GOAL_SPEEDUP, "dice_points": GOAL_DICE_POINTS,
                             "met": entry["speedup_vs_fastest_careful"] >= GOAL_SPEEDUP
                             and abs(entry["gpu_dice_points_vs_torch_fp32"]) <= GOAL_DICE_POINTS}
    if project is not None and best["image_size"] == 128 and best["n0"] + best["n"] == 110:
        entry["goal_seconds_128"] = {"seconds": GOAL_SECONDS_128, "met": project["seconds_median"] <= GOAL_SECONDS_128}
    eager = {r["precision"]: r for r in latency if r["backend"] == WEAK}
    if "fp32" in eager and project is not None:
        entry["speedup_vs_weak_eager_fp32"] = round(eager["fp32"]["seconds_median"] / project["seconds_median"], 2)
    fused = {r["precision"]: round(eager[r["precision"]]["seconds_median"] / r["seconds_median"], 2) for r in latency
             if r["backend"] == "torch-cuda-fused" and not r.get("variant") and r["precision"] in eager}
    if fused:
        entry["torch_cuda_fused_speedup_vs_eager"] = fused
    through = [r for r in rows if r.get("kind") == "throughput"]
    if through:
        entry["throughput"] = {row_label(r): r["images_per_second"] for r in through}
        top = max(through, key=lambda r: r["images_per_second"])
        entry["fastest_throughput"] = row_label(top)
        if top["image_size"] == 128 and top["n0"] + top["n"] == 110:
            entry["goal_images_per_second_128"] = {"images_per_second": GOAL_IMAGES_PER_SECOND_128,
                                                   "met": top["images_per_second"] >= GOAL_IMAGES_PER_SECOND_128}
    return entry


def gpu_summary(v: dict) -> str:
    """The GPU part of a summary line."""
    text = f"GPU: {v['fastest_gpu']} {v['gpu_seconds']:.4f} s"
    if "speedup_vs_fastest_careful" in v:
        text = (f"GPU: {v['fastest_project_gpu']} {v['project_seconds']:.4f} s, {v['speedup_vs_fastest_careful']}x "
                f"the fastest careful torch-cuda row ({v['fastest_careful']} {v['careful_seconds']:.4f} s)")
    elif "fastest_project_gpu" in v:
        text = f"GPU: {v['fastest_project_gpu']} {v['project_seconds']:.4f} s"
    if "gpu_dice_points_vs_torch_fp32" in v:
        text += f" ({v['gpu_dice_points_vs_torch_fp32']:+.2f} Dice points vs {v['gpu_torch_fp32']})"
    if "gpu_goal" in v:
        goal = v["gpu_goal"]
        text += (f" [goal {goal['speedup']}x with Dice within {goal['dice_points']} points: "
                 f"{'met' if goal['met'] else 'missed'}]")
    if "goal_seconds_128" in v:
        text += (f" [goal <= {v['goal_seconds_128']['seconds'] * 1000:.0f} ms: "
                 f"{'met' if v['goal_seconds_128']['met'] else 'missed'}]")
    if "speedup_vs_weak_eager_fp32" in v:
        text += f"; {v['speedup_vs_weak_eager_fp32']}x torch-cuda eager fp32 (the weak baseline)"
    if "torch_cuda_fused_speedup_vs_eager" in v:
        pairs = v["torch_cuda_fused_speedup_vs_eager"].items()
        text += "; fused over eager: " + ", ".join(f"{p} {x}x" for p, x in pairs)
    if "throughput" in v:
        text += "; images/s: " + ", ".join(f"{k} {x:.1f}" for k, x in v["throughput"].items())
        if "goal_images_per_second_128" in v:
            g = v["goal_images_per_second_128"]
            text += f" [goal >= {g['images_per_second']:.0f}/s: {'met' if g['met'] else 'missed'}]"
    return text


def device_peak_mb() -> float | None:
    """The device memory this process's torch allocator has held at most since the last reset (None: no GPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def reset_device_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def gpu_extras(backend, spec: dict) -> dict:
    """What a GPU row adds: its batch plan, compile record, device peak memory and (fused rows) the forward-pass
    limit of the model at the row's batch and precision."""
    record = getattr(backend, "record", {})
    out = {k: record[k] for k in ("max_batch", "packed_images", "noise", "capture_seconds") if k in record}
    compiled = record.get("compiled")
    if compiled:  # every image size's compile in this process (at open and for the row's size), never timed
        per_size = compiled.get("seconds_per_size") or {}
        out["compile_seconds"] = round(sum(per_size.values()) + (compiled.get("recompile_seconds") or 0), 2) \
            if per_size else compiled.get("seconds")
        out["compile_seconds_per_size"] = per_size
        out["compile_cache"] = compiled.get("cache")
        out["compiled_parity"] = (compiled.get("parity") or {}).get("label_agreement")
    forward = getattr(backend, "forward_seconds_per_sample", None)
    shape = getattr(backend, "_shape", None)
    if forward is not None and shape is not None and spec.get("kind") == "reference":
        batch = int(record.get("batch_size") or 1)
        out["forward_batch"] = batch
        try:
            out["forward_ms_per_sample"] = round(1000 * forward(shape, batch), 5)
            if compiled:
                out["forward_compiled_ms_per_sample"] = round(1000 * forward(shape, batch, compiled=True), 5)
        except RuntimeError as e:  # a model the device cannot capture: no limit for this row, said why
            out["forward_limit_error"] = (str(e).splitlines() or [type(e).__name__])[0][:160]
    out["device_peak_mb"] = device_peak_mb()
    return out
