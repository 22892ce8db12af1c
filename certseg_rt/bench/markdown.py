"""A bench result as the README's table: the machine line, one row per configuration, the summary lines."""
from __future__ import annotations

from .gpu import PEAK_SOURCE, gpu_summary, row_label


def machine_line(result: dict) -> str:
    m = result["machine"]
    peaks = ", ".join(f"{p} {v}" for p, v in m["peak_gflops"].items())
    versions = ", ".join(f"{k} {m[k]}" for k in ("torch", "onnxruntime", "openvino") if k in m)
    return (f"Model: bundled {result.get('model', 'chest')}.  Machine: {m['cpu']}, {m['cores']} cores "
            f"({', '.join(m['isa'])}); estimated peaks (GFLOP/s, int8: Gop/s): {peaks} ({m['peak_assumption']}); "
            f"{versions}, extension {m['extension']}.")


def to_markdown(result: dict) -> str:
    header = ("| backend | precision | layout | image | n0 + n | batch | seconds (median) | samples/s | peak RSS MB | "
              "certified Dice | GFLOP/s | of peak (which) |")
    cpu = [r for r in result["rows"] if not r.get("gpu")]
    gpu = [r for r in result["rows"] if r.get("gpu")]
    lines = [machine_line(result)]
    devices = sorted({r["device"] for r in result["rows"] if r.get("device")})
    if devices:
        lines += ["", f"GPU (torch-cuda rows): {', '.join(devices)}."]
    if cpu or not gpu:
        lines += ["", header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in cpu:
        dice = "-" if r["certified_dice"] is None else f"{r['certified_dice']:.3f}"
        frac = "-" if r.get("fraction_of_peak") is None else f"{r['fraction_of_peak']:.1%} ({r['peak']})"
        lines.append(f"| {r['backend']} | {r['precision']} | {r.get('layout') or '-'} | {r['image_size']}x{r['image_size']} "
                     f"| {r['n0']} + {r['n']} | {r['batch_size']} | {r['seconds_median']:.3f} | "
                     f"{r['samples_per_second']:.1f} | {r['peak_rss_mb']:.0f} | {dice} | {r['gflops_per_second']:.1f} "
                     f"| {frac} |")
    if gpu:
        lines += ["", *gpu_tables(gpu)]
    lines.append("")
    for k, v in result["summary"].items():
        if "fastest" not in v:  # GPU rows only
            lines.append(f"- {k}: {gpu_summary(v)}")
            continue
        parts = [f"- {k}: fastest CPU path {v['fastest']} {v['seconds']:.3f} s"]
        if v.get("fraction_of_peak") is not None:
            parts.append(f" ({v['fraction_of_peak']:.1%} of the {v['peak']} peak)")
        if "speedup_vs_fastest_torch" in v:
            parts.append(f", {v['speedup_vs_fastest_torch']}x the fastest torch row ({v['fastest_torch']} "
                         f"{v['torch_seconds']:.3f} s)")
        if "goal" in v:
            parts.append(f" [goal {v['goal']['speedup']}x with Dice within {v['goal']['dice_points']} points: "
                         f"{'met' if v['goal']['met'] else 'missed'}]")
        if "speedup_vs_torch_fp32_nchw" in v:
            parts.append(f", {v['speedup_vs_torch_fp32_nchw']}x torch eager fp32 NCHW")
        if "dice_points_vs_torch_fp32" in v:
            parts.append(f" ({v['dice_points_vs_torch_fp32']:+.2f} Dice points vs torch fp32)")
        if "speedup_vs_reference_loop" in v:
            parts.append(f", {v['speedup_vs_reference_loop']}x the reference loop")
        if "fastest_gpu" in v:
            parts.append(f"; {gpu_summary(v)}")
        lines.append("".join(parts))
    by_reason = {}
    for name, why in result.get("skipped", {}).items():
        by_reason.setdefault(why, []).append(name)
    for why, names in by_reason.items():
        lines.append(f"- no {', '.join(names)} rows: {why}")
    if result.get("partial"):
        lines.append("- partial: the bench was still running (or was stopped) when this was written")
    return "\n".join(lines) + "\n"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def gpu_tables(rows: list[dict]) -> list[str]:
    """The GPU rows: latency (one certify) and throughput (images/s), with both fractions."""
    lines = [f"GPU rows (one process per size and n; memory is the device's peak; chip peaks: {PEAK_SOURCE}):", "",
             "| row | image | n0 + n | batch (max) | seconds (median) | samples/s | of forward limit | of chip peak "
             "(which) | compile s | device MB | certified Dice |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r.get("kind") != "throughput"):
        peak = "-" if r.get("fraction_of_peak") is None else f"{r['fraction_of_peak']:.2%} ({r['peak']})"
        lines.append(f"| {row_label(r)} | {r['image_size']}x{r['image_size']} | {r['n0']} + {r['n']} | "
                     f"{r['batch_size']} ({r.get('max_batch', '-')}) | {r['seconds_median']:.4f} | "
                     f"{r['samples_per_second']:.0f} | {_pct(r.get('of_forward_limit'))} | {peak} | "
                     f"{r.get('compile_seconds') if r.get('compile_seconds') is not None else '-'} | "
                     f"{r.get('device_peak_mb') or '-'} | "
                     f"{'-' if r['certified_dice'] is None else format(r['certified_dice'], '.3f')} |")
    through = [r for r in rows if r.get("kind") == "throughput"]
    if through:
        lines += ["", "| throughput row | image | n0 + n | images | images/s | batch (images per batch) | of forward "
                      "limit | certified Dice |", "|---|---|---|---|---|---|---|---|"]
        for r in through:
            lines.append(f"| {row_label(r)} | {r['image_size']}x{r['image_size']} | {r['n0']} + {r['n']} | "
                         f"{r['images']} | {r['images_per_second']:.1f} | {r['batch_size']} "
                         f"({r.get('packed_images', 1)}) | {_pct(r.get('of_forward_limit'))} | "
                         f"{r['certified_dice']:.3f} |")
    return lines
