"""Paired certify timings for a shared or noisy machine: each configuration warm in its own process, timed in turn.

    python benchmarks/paired_certify.py [--size 128] [--rounds 7] [--rows openvino:bf16,torch-eager:bf16:channels_last,...]

`certseg-rt bench` times its rows one after the other, so load from other processes that comes and goes
between rows skews their ratios.  Here every configuration is opened once in its own process (the same row
kinds as the bench: ``certseg_rt.bench.rows``), warmed up, and then the parent asks each in turn for one whole
CERTIFY (n0 10 + n 100) per round; only one runs at a time.  Reported: the median seconds per configuration
and, per round, each one's time divided by the first row's, then the median of those ratios (paired).
`--threads 1` takes the threads' waits for each other out of the comparison, which on a loaded machine
dominate (a thread pool that spins at a barrier while another process holds its partner's core); the
ratio then compares single-core efficiency.  Engines are built in a temporary directory first (`--engines-dir` reuses a folder of engines named
BACKEND-PRECISION-SIZE).
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, sys, time
from certseg_rt.bench.rows import ROW_KINDS, DICE_PHANTOMS
from certseg_rt.data import HELD_OUT_SEEDS
from certseg_rt.data.modalities import get_modality
spec = json.loads(sys.argv[1])
images = [get_modality("chest").make_phantom(HELD_OUT_SEEDS[700 + i], spec["image_size"]).image
          for i in range(DICE_PHANTOMS)]
run, warm, backend = ROW_KINDS[spec["kind"]](spec)
warm(images[0])
print("ready", flush=True)
for line in sys.stdin:
    i = int(line)
    start = time.perf_counter()
    run(images[i % len(images)], 100 + i % len(images))
    print(time.perf_counter() - start, flush=True)
"""


def spec_of(row: str, size: int, engines: Path, model: str, threads: int | None = None) -> dict:
    parts = row.split(":")
    base = {"image_size": size, "n0": 10, "n": 100, "batch_size": 16, "model": model, "modality": "chest",
            "threads": threads}
    if parts[0] == "torch-eager":
        return {**base, "kind": "reference", "backend": parts[0], "precision": parts[1],
                "layout": parts[2] if len(parts) > 2 else "nchw"}
    return {**base, "kind": "engine", "backend": parts[0], "precision": parts[1],
            "engine": str(engines / f"{parts[0]}-{parts[1]}-{size}")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--rows", default="torch-eager:bf16:channels_last,torch-eager:fp32:channels_last,"
                                      "torch-eager:bf16:nchw,torch-eager:fp32:nchw,openvino:bf16,openvino:int8,"
                                      "openvino:fp32,onnxruntime:fp32")
    ap.add_argument("--engines-dir", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="inference threads of every row (1 is robust to other load: no thread waits on another)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from certseg_rt.zoo import bundled_model_dir

    model = str(bundled_model_dir("chest"))
    rows = args.rows.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        engines = args.engines_dir or Path(tmp)
        for row in rows:
            backend, precision = row.split(":")[:2]
            path = engines / f"{backend}-{precision}-{args.size}"
            if backend != "torch-eager" and not path.exists():
                print(f"building {path.name} ...", file=sys.stderr, flush=True)
                subprocess.run([sys.executable, "-m", "certseg_rt.cli", "build-engine", "--backend", backend,
                                "--precision", precision, "--image-size", str(args.size), "--out", str(path)],
                               check=True, capture_output=True)
        procs = {}
        for row in rows:
            procs[row] = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(spec_of(row, args.size, engines,
                                                                                            model, args.threads))],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert procs[row].stdout.readline().strip() == "ready", row  # one warms up at a time
        times = {row: [] for row in rows}
        for r in range(args.rounds):
            for row in rows:
                procs[row].stdin.write(f"{r}\n")
                procs[row].stdin.flush()
                times[row].append(float(procs[row].stdout.readline()))
        for p in procs.values():
            p.stdin.close()
            p.wait()
    first = rows[0]
    report = {"size": args.size, "rounds": args.rounds, "threads": args.threads, "rows": {
        row: {"seconds_median": round(statistics.median(t), 4),
              "ratio_to_first_median": round(statistics.median(a / b for a, b in zip(t, times[first])), 3),
              "seconds": [round(v, 4) for v in t]} for row, t in times.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for row, v in report["rows"].items():
            print(f"{args.size}x{args.size} {row:<34} {v['seconds_median']:8.3f} s   x{v['ratio_to_first_median']:.3f} "
                  f"of {first} (median of {args.rounds} paired rounds)")


if __name__ == "__main__":
    main()
