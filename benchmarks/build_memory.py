"""Peak memory of `build-engine` with a denoiser whose attention ONNX Runtime materialises (issue #13's OOM).

    python benchmarks/build_memory.py [--size 128] [--budgets 2048,4096] [--cap-gib 8] [--json]

Makes a diffusers UNet2DModel (block_out_channels 32,64,64; 8-head self-attention at size/2 and size/4,
random init) and builds an engine of the bundled chest segmenter behind it once per `--memory-budget`,
each build in a subprocess whose own peak resident set size is read from ``os.wait4``.
``--cap-gib`` limits each build's address space (RLIMIT_AS), so a build that asks for more fails
instead of waking the kernel's OOM killer on a shared machine.  Prints one row per budget: exit status,
peak RSS, and the parity check's chunks and peak growth (from the manifest).  At --size 128 ONNX Runtime
needs ~1 GB per sample for the attention; a build takes a few minutes on 2 cores.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def attention_denoiser(path: Path, size: int) -> Path:
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
                norm_num_groups=8).save_pretrained(path / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(path / "scheduler")
    return path


def build(denoiser: Path, size: int, budget: int | None, out: Path, cap_gib: float | None) -> dict:
    def limit():
        if cap_gib:
            cap = int(cap_gib * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    args = [sys.executable, "-m", "certseg_rt.cli", "build-engine", "--denoiser", str(denoiser), "--image-size",
            str(size), "--out", str(out), "--json", *(["--memory-budget", str(budget)] if budget else [])]
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, text=True, preexec_fn=limit)  # noqa: PLW1509
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (ru_maxrss, KiB)
        stdout.seek(0), stderr.seek(0)
        r = subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), stdout.read(), stderr.read())
    row = {"budget_mib": budget, "exit": r.returncode, "seconds": round(time.time() - t0),
           "peak_rss_mib": round(usage.ru_maxrss / 1024)}
    if r.returncode == 0:
        batching = json.loads(r.stdout)["parity"]["batching"]
        row["parity_chunks"] = {k: v["chunk"] for k, v in batching["runners"].items()}
        row["parity_peak_growth_mib"] = batching["peak_rss_growth_mib"]
    else:
        row["error"] = (r.stderr.strip().splitlines() or [""])[-1][:200]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--budgets", default="2048,4096", help="comma-separated MiB ('default' = half the available)")
    p.add_argument("--cap-gib", type=float, default=8.0, help="address-space limit per build (0: none)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        den = attention_denoiser(Path(tmp) / "denoiser", a.size)
        for i, b in enumerate(a.budgets.split(",")):
            rows.append(build(den, a.size, None if b == "default" else int(b), Path(tmp) / f"e{i}", a.cap_gib))
            if not a.json:
                print(rows[-1], flush=True)
    if a.json:
        print(json.dumps(rows, indent=2))
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
