"""Bench rows in this process (``python -m certseg_rt.bench SPEC_JSON``): one row's spec (the process is that
row's: its peak RSS is the row's own), its result as JSON on stdout; or a list of specs (GPU rows of one size and
n), run in turn, one JSON line each, {"error": ...} for a row that fails."""
import gc
import json
import sys

from .rows import run_row

specs = json.loads(sys.argv[1])
if isinstance(specs, dict):
    print(json.dumps(run_row(specs)))
else:
    for spec in specs:
        try:
            row = run_row(spec)
        except Exception as e:  # noqa: BLE001 - one row's failure, in one line, and the next row runs
            first = (str(e).strip().splitlines() or [""])[0][:300]
            row = {"error": f"{type(e).__name__}: {first}" if first else type(e).__name__}
        print(json.dumps(row), flush=True)
        gc.collect()  # the row's graphs and buffers go before the next row's are made
