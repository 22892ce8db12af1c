"""Overheads around the model: noise + votes inside the sampling loop, and the certify step from counts.

    python benchmarks/bench_kernels.py [--engine DIR] [--json]

1. On the bundled model's ONNX Runtime engine (128x128, batch 16): the share of the sampling loop spent
   in noise generation + noisy-input fill + vote counting (compiled extension, and the numpy fallback).
2. The certify step from counts (candidate, p-values, Holm) on a 512x512 image with 4 classes, n = 100:
   certseg_rt.certify_from_counts (table lookup, numpy), the C API's certify_counts (through the
   extension) and the published per-pixel scipy.stats.binomtest loop + statsmodels Holm.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from certseg_rt import certify_from_counts, kernels
from certseg_rt._ext_loader import ext


def median_seconds(fn, repeats=7):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def loop_overhead(engine_dir):
    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    backend = CertifiedSegmenter.load(engine_dir, batch_size=16).backend
    x = make_phantom(HELD_OUT_SEEDS[0]).image
    noisy = np.empty((16, *x.shape), np.float32)
    labels = backend.infer(noisy).copy()
    counts = np.zeros((4, *x.shape[1:]), np.int32)
    out = {"infer_ms": 1000 * median_seconds(lambda: backend.infer(noisy))}
    impls = {"numpy": kernels} | ({"extension": ext} if ext is not None else {})
    for name, k in impls.items():
        noise = median_seconds(lambda: k.fill_noisy(x, 0.25, 0, 0, noisy))
        votes = median_seconds(lambda: k.accumulate_votes(labels, counts))
        total = out["infer_ms"] / 1000 + noise + votes
        out[name] = {"noise_ms": round(1000 * noise, 3), "votes_ms": round(1000 * votes, 3),
                     "share_of_loop": round((noise + votes) / total, 4)}
    out["infer_ms"] = round(out["infer_ms"], 2)
    return out


def certify_step(size=512, n=100, classes=4, reference=True):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(classes, 0.3), size=(size, size))
    counts0 = np.ascontiguousarray(np.moveaxis(np.array([rng.multinomial(10, p) for p in probs.reshape(-1, classes)]).reshape(size, size, classes), -1, 0), dtype=np.int32)
    counts = np.ascontiguousarray(np.moveaxis(np.array([rng.multinomial(n, p) for p in probs.reshape(-1, classes)]).reshape(size, size, classes), -1, 0), dtype=np.int32)
    out = {"image": f"{size}x{size}", "classes": classes, "n": n}
    out["python_table_lookup_ms"] = round(1000 * median_seconds(
        lambda: certify_from_counts(counts0, counts, n=n, sigma=0.25, tau=0.75, alpha=0.001)), 2)
    if ext is not None:
        c0, c1 = (np.ascontiguousarray(c.reshape(classes, -1)) for c in (counts0, counts))
        out["c_api_ms"] = round(1000 * median_seconds(lambda: ext.certify_counts(c0, c1, n, 0.75, 0.001, "holm")), 2)
    if reference:
        from scipy.stats import binomtest
        from statsmodels.stats.multitest import multipletests

        def per_pixel():
            cand = counts0.argmax(0).ravel()
            flat = counts.reshape(classes, -1)
            pv = np.array([binomtest(int(flat[c, p]), n, 0.75, alternative="greater").pvalue
                           for p, c in enumerate(cand)])
            return multipletests(pv, 0.001, "holm")[0]
        start = time.perf_counter()
        per_pixel()
        out["per_pixel_scipy_loop_ms"] = round(1000 * (time.perf_counter() - start), 1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, default=None)
    ap.add_argument("--no-reference", action="store_true", help="skip the slow per-pixel scipy loop")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = args.engine
        if engine is None:
            from certseg_rt.export.build import build_engine
            from certseg_rt.export.loaders import load_model_dir
            from certseg_rt.zoo import bundled_model_dir

            engine = Path(tmp) / "engine"
            build_engine(load_model_dir(bundled_model_dir()), 0.25, engine, log=lambda m: None)
        result = {"sampling_loop": loop_overhead(engine), "certify_step": certify_step(reference=not args.no_reference)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        loop, step = result["sampling_loop"], result["certify_step"]
        print(f"sampling loop, batch 16 at 128x128: inference {loop['infer_ms']} ms per batch")
        for name in ("extension", "numpy"):
            if name in loop:
                v = loop[name]
                print(f"  {name:<9} noise {v['noise_ms']} ms + votes {v['votes_ms']} ms = "
                      f"{v['share_of_loop']:.1%} of the loop")
        print(f"certify step from counts, {step['image']}, {step['classes']} classes, n={step['n']}:")
        for key in ("python_table_lookup_ms", "c_api_ms", "per_pixel_scipy_loop_ms"):
            if key in step:
                print(f"  {key}: {step[key]}")


if __name__ == "__main__":
    sys.exit(main())
