"""certseg-rt command line: verbs are the user's jobs.  Progress on stderr, results on stdout.

Exit codes: 0 success, 1 error (one line naming the problem and the fix), 2 usage.
One module per family of verbs; each registers its commands on the group in ``group.py``.
"""
from . import bench_verb, build_verbs, certify_verbs, data_verb, evaluate_verbs, import_verb, info_verb  # noqa: F401 (register the verbs)
from .group import main

__all__ = ["main"]
