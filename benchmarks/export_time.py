"""Wall time of `certseg-rt export` with each torch exporter (TorchScript-based, dynamo) on a bundled model.

    python benchmarks/export_time.py [--model chest] [--repeats 1] [--json]

Each export runs in its own process (so that neither profits from the other's caches), without the parity check;
the time is that of the export verb itself, after torch, diffusers and onnx are imported (interpreter start and
imports, a few seconds, are the same for both).  README's "~2 s rather than ~13 s" is this script's output.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

TIMED = """
import sys, time
import diffusers, onnx, torch  # noqa: F401  (imported before the clock starts)
from click.testing import CliRunner
from certseg_rt.cli import main
start = time.perf_counter()
r = CliRunner().invoke(main, ["export", "--model", sys.argv[1], "--exporter", sys.argv[2], "--no-parity",
                              "--out", sys.argv[3]])
assert r.exit_code == 0, r.output
print(time.perf_counter() - start)
"""


def export_seconds(model: str, exporter: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run([sys.executable, "-c", TIMED, model, exporter, out], check=True, capture_output=True,
                           text=True)
        return float(r.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="chest")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {exporter: statistics.median(export_seconds(args.model, exporter) for _ in range(args.repeats))
              for exporter in ("torchscript", "dynamo")}
    if args.json:
        print(json.dumps({"model": args.model, "seconds": result}))
    else:
        print(f"export --model {args.model}: torchscript {result['torchscript']:.1f} s, dynamo {result['dynamo']:.1f} s "
              f"({result['dynamo'] / result['torchscript']:.1f}x), median of {args.repeats}, each in a fresh process")


if __name__ == "__main__":
    main()
