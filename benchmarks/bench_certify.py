"""Certify latency: ONNX Runtime engine vs batched torch eager, same run, several batch sizes.

    python benchmarks/bench_certify.py --out certseg-out/bench      # JSON + markdown table

Same as `certseg-rt bench --json --out DIR`; this script is the reproducible entry point for README numbers.
"""
import sys

from certseg_rt.cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
