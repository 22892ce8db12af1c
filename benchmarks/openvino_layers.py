"""Where an OpenVINO engine's time goes, per layer type and kernel: the CPU plugin's own per-node counters.

    python benchmarks/openvino_layers.py --engine DIR [--batch 15] [--runs 10] [--top 12] [--json]

The engine's fused graph is compiled as the runtime compiles it (its precision hint, LATENCY, one stream, its
threads; runtime/backends/openvino.py) with PERF_COUNT on, for the static batch of a default certify's n
(15 at batch 16), and runs ``runs`` times on noisy held-out phantoms after a warm-up.  Prints each node type's
share of the summed node time, split by the kernel that ran it (``exec_type``: e.g. ``brgconv_avx512_core_vnni``,
``jit_avx512``, ``ref``), and the milliseconds per sample.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def profile(engine: Path, batch: int, runs: int) -> dict:
    from certseg_rt import kernels
    from certseg_rt.data import HELD_OUT_SEEDS
    from certseg_rt.data.modalities import get_modality
    from certseg_rt.manifest import load_manifest
    from certseg_rt.runtime.backends.openvino import compile_properties, import_openvino

    ov = import_openvino()
    m = load_manifest(engine)
    core = ov.Core()
    model = core.read_model(str(engine / m["graphs"]["fused"]))
    c, h, w = (m["input"][k] for k in ("channels", "height", "width"))
    model.reshape([batch, c, h, w])
    properties = {**compile_properties(m["openvino"]["inference_precision"], m["openvino"].get("threads") or 0),
                  "PERF_COUNT": True}
    compiled = core.compile_model(model, "CPU", properties)
    request = compiled.create_infer_request()
    image = get_modality(m.get("modality") or "chest").make_phantom(HELD_OUT_SEEDS[900], h).image
    x = kernels.fill_noisy(np.repeat(image[:1], c, 0) if image.shape[0] != c else image, m["sigma"], 0, 0,
                           np.empty((batch, c, h, w), np.float32))
    request.infer({0: x})  # warm-up
    by_type, by_kernel, wall = defaultdict(float), defaultdict(float), 0.0
    import time

    for _ in range(runs):
        start = time.perf_counter()
        request.infer({0: x})
        wall += time.perf_counter() - start
        for node in request.profiling_info:
            if node.status != node.Status.EXECUTED:
                continue
            us = node.real_time.total_seconds() * 1e6
            by_type[node.node_type] += us
            by_kernel[(node.node_type, node.exec_type)] += us
    total = sum(by_type.values())
    return {"engine": str(engine), "precision": m["precision"], "batch": batch, "runs": runs,
            "ms_per_sample_wall": round(1e3 * wall / runs / batch, 3),
            "ms_per_sample_nodes": round(total / 1e3 / runs / batch, 3),
            "by_type": {k: round(v / total, 4) for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])},
            "by_kernel": {f"{t} [{e}]": round(v / total, 4)
                          for (t, e), v in sorted(by_kernel.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=15)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    result = profile(a.engine, a.batch, a.runs)
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['engine']} ({result['precision']}), batch {a.batch}: {result['ms_per_sample_wall']} ms per sample "
          f"(wall), {result['ms_per_sample_nodes']} ms in nodes")
    for name, share in list(result["by_kernel"].items())[:a.top]:
        print(f"  {share:7.1%}  {name}")
    print("by node type: " + ", ".join(f"{k} {v:.1%}" for k, v in list(result["by_type"].items())[:a.top]))


if __name__ == "__main__":
    main()
