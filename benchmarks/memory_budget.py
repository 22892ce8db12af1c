"""Memory per batch at 512x512, per backend, and a 512x512 certify within a budget (default 2 GB).

    python benchmarks/memory_budget.py [--size 512] [--batches 1,8] [--budget 2G] [--backends onnxruntime,openvino,torch-eager]

For each backend: an engine of the bundled chest model at SIZE (built in a temporary directory; the torch
reference needs none), then, each in its own subprocess so that its peak RSS (VmHWM) is its own,

* certify at each batch of --batches with no budget: peak RSS against the runner's estimate
  (``runtime.memory.MemoryCosts``), and the per-sample slope and base they imply (how the runners'
  ``MEMORY`` constants were measured);
* certify with ``--max-memory BUDGET`` and the default batch (16): the batch the runtime picked and the peak.

Exits 1 if a budgeted certify peaks above the budget.  The machine's other processes do not change a
process's own peak RSS, so this runs fine on a shared machine (it is slow there, not wrong).
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
from certseg_rt.certify import certify
from certseg_rt.data.modalities import get_modality
from certseg_rt.data import HELD_OUT_SEEDS
from certseg_rt.runtime.memory import parse_memory
from certseg_rt.bench.machine import peak_rss_mb
backend_name, target, size, batch, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
budget = None if budget == "none" else parse_memory(budget)
if backend_name == "torch-eager":
    from certseg_rt.runtime.backends import open_model
    backend = open_model(target, 0.25, batch_size=batch, max_memory=budget if budget else 1 << 40)
    estimate = None
else:
    from certseg_rt.runtime.segmenter import CertifiedSegmenter
    from certseg_rt.runtime.backends import runner
    seg = CertifiedSegmenter.load(target, batch_size=batch, max_memory=budget if budget else 1 << 40)
    backend = seg.backend
    estimate = runner(seg.manifest["backend"]).MEMORY.estimate(seg.manifest)
image = get_modality("chest").make_phantom(HELD_OUT_SEEDS[0], size).image
cert = certify(backend, image, n0=2, n=2 * backend.batch_size + 1, seed=0)
print(json.dumps({"batch": backend.batch_size, "peak_mb": peak_rss_mb(),
                  "estimate_mb": None if estimate is None else estimate.at(backend.batch_size) / 2**20}))
"""


def child(backend: str, target: str, size: int, batch: int, budget: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, backend, target, str(size), str(batch), budget],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--budget", default="2G")
    ap.add_argument("--backends", default="onnxruntime,openvino,torch-eager")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from certseg_rt.runtime.memory import parse_memory
    from certseg_rt.zoo import bundled_model_dir

    budget_mb = parse_memory(args.budget) / 2**20
    batches = [int(b) for b in args.batches.split(",")]
    results, over = {}, False
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            target = str(bundled_model_dir("chest"))
            if backend != "torch-eager":
                target = str(Path(tmp) / backend)
                print(f"building a {backend} engine at {args.size}x{args.size} ...", file=sys.stderr, flush=True)
                r = subprocess.run([sys.executable, "-m", "certseg_rt.cli", "build-engine", "--backend", backend,
                                    "--image-size", str(args.size),
                                    "--out", target], capture_output=True, text=True, check=False)
                if r.returncode != 0:
                    sys.exit(f"build-engine --backend {backend} failed: {r.stderr.strip().splitlines()[-1:]}")
            runs = {}
            for b in batches:
                print(f"{backend}: batch {b}, no budget", file=sys.stderr, flush=True)
                runs[b] = child(backend, target, args.size, b, "none")
            slope = None
            if len(batches) >= 2 and all("peak_mb" in runs[b] for b in batches[:2]):
                b0, b1 = batches[:2]
                slope = (runs[b1]["peak_mb"] - runs[b0]["peak_mb"]) / (b1 - b0)
            print(f"{backend}: default batch 16, --max-memory {args.budget}", file=sys.stderr, flush=True)
            budgeted = child(backend, target, args.size, 16, args.budget)
            over |= budgeted.get("peak_mb", float("inf")) > budget_mb
            results[backend] = {"unbudgeted": runs, "mb_per_sample": None if slope is None else round(slope, 1),
                                "budgeted": budgeted}
    report = {"size": args.size, "budget": args.budget, "backends": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for backend, r in results.items():
            rows = "; ".join(f"batch {b}: peak {v.get('peak_mb', float('nan')):.0f} MB (estimate "
                             f"{v.get('estimate_mb') or float('nan'):.0f})" for b, v in r["unbudgeted"].items())
            bud = r["budgeted"]
            print(f"{backend} {args.size}x{args.size}: {rows}; {r['mb_per_sample']} MB per sample; with "
                  f"--max-memory {args.budget}: batch {bud.get('batch')}, peak {bud.get('peak_mb', float('nan')):.0f} MB"
                  + (f" ({bud['error']})" if "error" in bud else ""))
    sys.exit(1 if over else 0)


if __name__ == "__main__":
    main()
