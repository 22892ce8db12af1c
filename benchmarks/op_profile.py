"""Where the engine's time goes, by operator type: ONNX Runtime's own profiler (and OpenVINO's, if installed).

    python benchmarks/op_profile.py [--engine DIR] [--int8-engine DIR] [--batch 16] [--runs 10] [--json]

Without --engine (--int8-engine) it builds the bundled chest model's fp32 (int8) ONNX Runtime engine in a
temporary folder first.  Each fused graph runs `runs` times on a batch of noisy held-out phantoms after a
warm-up, in a session configured as the runtime configures it (runtime/backends/onnxruntime.py), with
SessionOptions.enable_profiling; the "Node" events' kernel times are summed per operator type.  With OpenVINO
installed, the fp32 model.onnx is also compiled for its CPU plugin with PERF_COUNT and profiled the same way
(real time per executed node type).  Prints, per graph, each operator type's share of the summed node time.
README's profile figures (Conv ~51% of the fp32 graph, QLinearConv ~30% of the int8 graph) are this output.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def build(out: Path, precision: str) -> Path:
    from click.testing import CliRunner

    from certseg_rt.cli import main

    r = CliRunner().invoke(main, ["build-engine", "--out", str(out), "--precision", precision])
    if r.exit_code != 0:
        raise SystemExit(f"build-engine --precision {precision} failed: {r.output.strip()}")
    return out


def noisy_batch(engine_dir: Path, batch: int) -> np.ndarray:
    from certseg_rt import kernels
    from certseg_rt.data import HELD_OUT_SEEDS
    from certseg_rt.data.modalities import get_modality
    from certseg_rt.manifest import load_manifest

    manifest = load_manifest(engine_dir)
    inp = manifest["input"]
    ph = get_modality(manifest.get("modality", "chest")).make_phantom(HELD_OUT_SEEDS[0], inp["height"])
    return kernels.fill_noisy(ph.image, manifest["sigma"], 0, 0, np.empty((batch, *ph.image.shape), np.float32))


def shares(times: dict[str, float], runs: int) -> list[dict]:
    total = sum(times.values())
    return [{"op": op, "share": t / total, "ms_per_run": t / runs / 1000}
            for op, t in sorted(times.items(), key=lambda kv: -kv[1])]


def onnxruntime_profile(engine_dir: Path, x: np.ndarray, runs: int) -> list[dict]:
    import onnxruntime as ort

    from certseg_rt.manifest import load_manifest
    from certseg_rt.runtime.backends.onnxruntime import graph_paths

    fused, _ = graph_paths(engine_dir, load_manifest(engine_dir))
    so = ort.SessionOptions()  # as make_session configures it, plus the profiler
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(fused), so, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        session.run(None, {name: x})  # warm-up, excluded below by its timestamp
        for _ in range(runs):
            session.run(None, {name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_timed = sorted(e["ts"] for e in runs_seen)[1] if len(runs_seen) > 1 else 0
    times: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= first_timed:
            times[e["args"]["op_name"]] += e["dur"]  # microseconds
    return shares(times, runs)


def openvino_profile(engine_dir: Path, x: np.ndarray, runs: int) -> list[dict] | None:
    from certseg_rt.errors import CertsegError
    from certseg_rt.runtime.backends.openvino import import_openvino

    try:
        ov = import_openvino()
    except CertsegError:  # not installed
        return None
    from certseg_rt.manifest import load_manifest
    from certseg_rt.runtime.backends.onnxruntime import graph_paths

    fused, _ = graph_paths(engine_dir, load_manifest(engine_dir))
    core = ov.Core()
    model = core.read_model(str(fused))
    model.reshape({model.inputs[0]: ov.PartialShape(list(x.shape))})
    request = core.compile_model(model, "CPU", {"PERF_COUNT": "YES"}).create_infer_request()
    request.infer({0: x})
    times: dict[str, float] = defaultdict(float)
    for _ in range(runs):
        request.infer({0: x})
        for node in request.get_profiling_info():
            times[node.node_type] += node.real_time.total_seconds() * 1e6
    return shares({op: t for op, t in times.items() if t > 0}, runs)


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    for row in rows:
        if row["share"] >= 0.005:
            print(f"  {row['op']:<28}{row['share']:>7.1%}{row['ms_per_run']:>10.2f} ms/run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", type=Path, help="fp32 ONNX Runtime engine directory (default: build one)")
    parser.add_argument("--int8-engine", type=Path, help="int8 engine directory (default: build one)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"fp32": args.engine or build(Path(tmp) / "fp32", "fp32"),
                   "int8": args.int8_engine or build(Path(tmp) / "int8", "int8")}
        x = noisy_batch(engines["fp32"], args.batch)
        result = {f"onnxruntime {p}": onnxruntime_profile(d, x, args.runs) for p, d in engines.items()}
        result["openvino fp32"] = openvino_profile(engines["fp32"], x, args.runs)
    if args.json:
        print(json.dumps({"batch": args.batch, "runs": args.runs, "profiles": result}, indent=2))
        return
    for title, rows in result.items():
        if rows is None:
            print(f"\n{title}: not installed")
        else:
            print_table(f"{title}, batch {args.batch}, {args.runs} runs: share of node time by operator type", rows)


if __name__ == "__main__":
    main()
