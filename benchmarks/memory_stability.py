"""Memory stability: certify many images in one process with an engine directory; RSS must not grow.

    python benchmarks/memory_stability.py [--engine DIR] [--images 200] [--n0 10] [--n 100] [--json]

Certifies `--images` held-out phantoms (a fixed set of 20, cycled, made before the loop) one after the
other with one CertifiedSegmenter, reading the resident set size (VmRSS in /proc/self/status) after
each.  Growth is measured from the end of the warm-up (image `--warmup`, by default 20: ONNX Runtime's
arena, the sampling buffers and the IOBindings are allocated by then) to the last image.  Exits 1 when
it is `--limit` (5%) or more; a leak of a noise buffer or a binding per image would show as ~1 MB per
image, far above that.

Without --engine an fp32 engine of the bundled model is built first, in a subprocess and a temporary
directory, so this process never imports torch and its RSS is the runtime's alone.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark needs Linux)")


def build_engine(out: Path) -> None:
    print(f"building an engine of the bundled model in {out} ...", file=sys.stderr, flush=True)
    r = subprocess.run([sys.executable, "-m", "certseg_rt.cli", "build-engine", "--out", str(out)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"build-engine failed: {r.stderr.strip().splitlines()[-1:]}")


def measure(engine: Path, *, images: int, warmup: int, n0: int, n: int, threads: int | None) -> dict:
    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    start_rss = rss_mb()
    seg = CertifiedSegmenter.load(engine, threads=threads)
    size = seg.manifest["input"]["height"]
    phantoms = [make_phantom(HELD_OUT_SEEDS[i], size=size).image for i in range(20)]
    rss, seconds = [], []
    for i in range(images):
        t = time.perf_counter()
        cert = seg.certify(phantoms[i % len(phantoms)], n0=n0, n=n, seed=i)
        seconds.append(time.perf_counter() - t)
        del cert
        rss.append(rss_mb())
        if (i + 1) % 20 == 0 or i + 1 == images:
            print(f"image {i + 1:4d}  RSS {rss[-1]:8.1f} MB  {seconds[-1]:.2f} s", file=sys.stderr, flush=True)
    warm = rss[min(warmup, images) - 1]
    return {"engine": str(engine), "images": images, "n0": n0, "n": n, "threads": threads,
            "rss_mb_before_load": round(start_rss, 1), "rss_mb_after_image_1": round(rss[0], 1),
            f"rss_mb_after_image_{min(warmup, images)}": round(warm, 1),
            f"rss_mb_after_image_{images}": round(rss[-1], 1), "rss_mb_max": round(max(rss), 1),
            "growth_after_warmup": round((rss[-1] - warm) / warm, 4),
            "seconds_per_image_median": round(sorted(seconds)[len(seconds) // 2], 3),
            "rss_mb_every_20": [round(v, 1) for v in rss[19::20]]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", type=Path, default=None, help="engine directory [default: build one]")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20, help="growth is measured from this image on")
    ap.add_argument("--n0", type=int, default=10)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads [default: all cores]")
    ap.add_argument("--limit", type=float, default=0.05, help="fail when growth after warm-up reaches this")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if args.images < 2 or not 1 <= args.warmup < args.images:
        ap.error("need --images >= 2 and 1 <= --warmup < --images")
    with tempfile.TemporaryDirectory() as tmp:
        engine = args.engine
        if engine is None:
            engine = Path(tmp) / "engine"
            build_engine(engine)
        result = measure(engine, images=args.images, warmup=args.warmup, n0=args.n0, n=args.n, threads=args.threads)
    result["limit"] = args.limit
    result["stable"] = result["growth_after_warmup"] < args.limit
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        w, last = min(args.warmup, args.images), args.images
        print("| image | RSS MB |\n|---|---|")
        for label, key in (("1", "rss_mb_after_image_1"), (str(w), f"rss_mb_after_image_{w}"),
                           (str(last), f"rss_mb_after_image_{last}"), ("max", "rss_mb_max")):
            print(f"| {label} | {result[key]} |")
        print(f"\ngrowth from image {w} to {last}: {result['growth_after_warmup']:+.2%} (limit {args.limit:.0%}); "
              f"{result['seconds_per_image_median']} s per image (n0={args.n0}, n={args.n})")
    return 0 if result["stable"] else 1


if __name__ == "__main__":
    sys.exit(main())
