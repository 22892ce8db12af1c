"""One bench row in this process (``python -m certseg_rt.bench SPEC_JSON``): the row's result as JSON on stdout."""
import json
import sys

from .rows import run_row

print(json.dumps(run_row(json.loads(sys.argv[1]))))
