"""Mutation testing of the certification core: one command that mutates, tests, and prints the score and survivors.

    .venv/bin/python tools/mutation.py              # a fresh run (mutmut, from the [test] extra), then the report
    .venv/bin/python tools/mutation.py --report     # the report of the last run only
    .venv/bin/python tools/mutation.py --keep       # resume: reuse the results already in mutants/

What is mutated and which tests run is configured in pyproject.toml ([tool.mutmut]).  The report lists every
surviving mutant with its diff, unless docs/mutation-survivors.md names it (with the reason it cannot change
behaviour); the exit status is 1 when a survivor is not named there.

Why a wrapper around ``mutmut run``: mutmut copies the package to mutants/ and puts that copy first on sys.path,
but an editable install (scikit-build-core's, as in the README's set-up) maps ``certseg_rt.*`` to the source tree
with a meta-path finder that wins over sys.path, so the tests would import the unmutated sources and every mutant
would "survive".  This wrapper removes that finder before mutmut starts (its workers are forked from this
process) and checks afterwards that the tests imported mutants/, and that the numpy kernels ran (the compiled
extension lives in the installed package, not in mutants/, so it cannot shadow the mutated kernels.py).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SURVIVORS_DOC = ROOT / "docs" / "mutation-survivors.md"

# One thread per library: mutmut forks two workers on a 2-core machine, and OpenMP pools do not survive fork.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")


def drop_editable_finders() -> None:
    """Remove editable-install import hooks, so that ``import certseg_rt`` follows sys.path (mutants/ first)."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in (type(f).__module__ or "").lower()
                        and "ScikitBuild" not in type(f).__name__]
    for name in [m for m in sys.modules if m == "certseg_rt" or m.startswith("certseg_rt.")]:
        del sys.modules[name]


def run_mutmut(max_children: int, log: Path) -> None:
    """mutmut run, its progress (a spinner per mutant) and the tests' output going to `log`."""
    from mutmut.__main__ import cli

    log.parent.mkdir(exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            cli.main(["run", "--max-children", str(max_children)], standalone_mode=False)
        except SystemExit as e:  # mutmut exits on its own checks (clean tests failing, forced failure not failing)
            code = e.code
        else:
            code = 0
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    if code not in (0, None):
        tail = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-15:]
        sys.exit("mutmut stopped (exit " + str(code) + "); the end of " + str(log) + ":\n" + "\n".join(tail))


def check_imports_were_mutated() -> None:
    """The tests ran against mutants/ (and so against the numpy kernels), not against the source tree."""
    certify = sys.modules.get("certseg_rt.certify")
    loader = sys.modules.get("certseg_rt._ext_loader")
    if certify is None or Path(certify.__file__).resolve().parts[-3] != "mutants":
        sys.exit(f"mutation run imported certseg_rt.certify from {getattr(certify, '__file__', None)}, not from "
                 f"mutants/: the results do not test the mutants")
    if loader is not None and loader.ext is not None:
        sys.exit(f"the compiled extension {loader.ext.__file__} was loaded: it shadows the mutated numpy kernels")


def justified() -> dict[str, str]:
    """Mutant name -> reason, from the table in docs/mutation-survivors.md."""
    if not SURVIVORS_DOC.exists():
        return {}
    rows = re.findall(r"^\|\s*`([\w.]+__mutmut_\d+)`\s*\|(.*)\|\s*$", SURVIVORS_DOC.read_text(), re.MULTILINE)
    return {name: reason.strip() for name, reason in rows}


def report() -> int:
    from mutmut.__main__ import SourceFileMutationData, get_diff_for_mutant, walk_mutatable_files
    from mutmut.stats import status_by_exit_code

    by_status: dict[str, list[str]] = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in data.exit_code_by_key.items():
            by_status.setdefault(status_by_exit_code[code], []).append(name)
    total = sum(map(len, by_status.values()))
    if not total:
        print("no mutation results in mutants/: run without --report first")
        return 1
    killed = len(by_status.get("killed", [])) + len(by_status.get("timeout", []))
    print("\nmutation results: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(by_status.items())))
    survivors = sorted(by_status.get("survived", []) + by_status.get("no tests", []) + by_status.get("suspicious", []))
    reasons = justified()
    unexplained = [s for s in survivors if s not in reasons]
    print(f"mutation score: {killed}/{total} = {killed / total:.1%} killed; {len(survivors)} survivors, "
          f"{len(survivors) - len(unexplained)} of them justified in {SURVIVORS_DOC.relative_to(ROOT)}")
    for name in survivors:
        if name in reasons:
            print(f"  justified  {name}: {reasons[name]}")
    for name in unexplained:
        print(f"\n  SURVIVED (not justified)  {name}")
        try:
            print("    " + get_diff_for_mutant(name).strip().replace("\n", "\n    "))
        except Exception as e:  # a diff is a courtesy; the name is what matters
            print(f"    (no diff: {e})")
    stale = sorted(set(reasons) - set(survivors))
    if stale:
        print(f"\n{len(stale)} entries of {SURVIVORS_DOC.name} no longer survive (killed now, or renamed): "
              + ", ".join(stale))
    return 1 if unexplained else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="only print the report of the last run")
    parser.add_argument("--keep", action="store_true", help="reuse results already in mutants/ (resume)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2, help="parallel test workers")
    args = parser.parse_args()
    os.chdir(ROOT)
    if not args.report:
        if not args.keep:
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        drop_editable_finders()
        start = time.monotonic()
        log = ROOT / "mutants" / "mutmut-run.log"
        print(f"mutating the certification core and running the fast tests ({args.max_children} workers); "
              f"progress in {log.relative_to(ROOT)}", flush=True)
        run_mutmut(args.max_children, log)
        check_imports_were_mutated()
        print(f"\nmutation run took {time.monotonic() - start:.0f} s with {args.max_children} workers")
    return report()


if __name__ == "__main__":
    sys.exit(main())
