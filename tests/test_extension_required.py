"""The compiled extension is required wherever the build compiled it; a pure-Python install stays legitimate.

The build writes certseg_rt/_ext_built.json beside the module (cpp_ext/CMakeLists.txt).  Where that marker
exists, an extension that cannot be imported (an undefined symbol, another Python) must not turn the kernel
tests into skips and the runtime into a silent numpy fallback: this module's first test fails, and the runtime
says why on stderr.  The other tests build real copies of the package in a temporary folder (a broken _ext .so
with the marker; no extension and no marker) and import them in a fresh interpreter.
"""
from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

import certseg_rt
from certseg_rt import _ext_loader

REPO = Path(__file__).resolve().parents[1]
MISSING_SYMBOL = "certseg_symbol_that_no_library_defines"

STATUS = """
import json, certseg_rt, certseg_rt._ext_loader as loader
print(json.dumps({"file": certseg_rt.__file__, "status": certseg_rt.EXTENSION_STATUS,
                  "broken": loader.BUILT_BUT_BROKEN, "built": loader.BUILD is not None,
                  "philox": [int(v) for v in certseg_rt.philox4x32([0, 0, 0, 0], [0, 0])]}))
"""
RANDOM123_ZERO = [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_compiled_extension_loads_where_the_build_compiled_it():
    if _ext_loader.BUILD is None:
        pytest.skip("pure-Python install: this build compiled no extension (no certseg_rt/_ext_built.json)")
    assert _ext_loader.ext is not None, (
        f"the build compiled {_ext_loader.BUILD.get('module')} ({_ext_loader.BUILD['path']}) but it cannot be "
        f"imported: {_ext_loader.IMPORT_ERROR}")
    assert not _ext_loader.BUILT_BUT_BROKEN and certseg_rt.EXTENSION_STATUS["cpu"]
    assert certseg_rt.EXTENSION_STATUS["cuda"] is _ext_loader.BUILD.get("cuda", certseg_rt.EXTENSION_STATUS["cuda"])


def _package_copy(root: Path, extension: bytes | None, marker: bool) -> Path:
    """certseg_rt copied under root (without any compiled module or marker, and without the bundled models,
    which these checks do not load), then given what the case needs."""
    source = Path(certseg_rt.__file__).parent
    target = root / "certseg_rt"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "_ext_built.json", "zoo"))
    module = f"_ext{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    if extension is not None:
        (target / module).write_bytes(extension)
    if marker:
        (target / "_ext_built.json").write_text(json.dumps({"module": f"certseg_rt/{module}", "cuda": False}))
    return root


def _compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _broken_extension(tmp: Path) -> bytes:
    """A shared object that refers to a symbol no library defines (what a stale or mislinked build gives),
    compiled here; without a C compiler, bytes that are no shared object at all."""
    compiler = _compiler()
    if compiler is None:
        return b"not an ELF file: a build that left garbage where the module should be\n"
    c = tmp / "broken.c"
    c.write_text(f"extern void {MISSING_SYMBOL}(void);\nvoid *PyInit__ext(void) {{ {MISSING_SYMBOL}(); return 0; }}\n")
    so = tmp / "broken.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(so), str(c)], check=True, capture_output=True)
    return so.read_bytes()


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    """A fresh interpreter that sees the copy first.  -S: no site hooks, so no editable-install finder redirects
    certseg_rt to the source tree; the dependencies come from this interpreter's site-packages, after the copy."""
    path = os.pathsep.join([str(root), *site.getsitepackages()])
    env = {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-S", *args], check=False, capture_output=True, text=True, env=env, cwd=root,
                          timeout=120)


def test_built_but_broken_extension_is_reported_and_fails_the_tests(tmp_path):
    root = _package_copy(tmp_path / "pkg", _broken_extension(tmp_path), marker=True)
    r = _run(root, "-c", STATUS)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert Path(result["file"]).is_relative_to(root)  # the copy was imported, not the installed package
    assert result["built"] and result["broken"] and result["status"] == {"cpu": False, "cuda": False}
    assert result["philox"] == RANDOM123_ZERO  # the numpy kernels still give the contract's numbers
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "was built for this install but cannot be loaded" in lines[0] and "Rebuild it" in lines[0]
    if _compiler() is not None:
        assert "undefined symbol" in lines[0] and MISSING_SYMBOL in lines[0], lines[0]

    # The suite fails there: this module's first test, run against the broken copy.
    test = root / "test_required.py"
    shutil.copy(__file__, test)
    r = _run(root, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{test}::"
             "test_compiled_extension_loads_where_the_build_compiled_it")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 failed" in r.stdout and "cannot be imported" in r.stdout, r.stdout


def test_pure_python_install_is_legitimate_and_quiet(tmp_path):
    root = _package_copy(tmp_path / "pkg", extension=None, marker=False)
    r = _run(root, "-c", STATUS)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert Path(result["file"]).is_relative_to(root)
    assert not result["built"] and not result["broken"] and result["status"] == {"cpu": False, "cuda": False}
    assert result["philox"] == RANDOM123_ZERO
    assert r.stderr == ""
    test = root / "test_required.py"
    shutil.copy(__file__, test)
    r = _run(root, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{test}::"
             "test_compiled_extension_loads_where_the_build_compiled_it")
    assert r.returncode == 0 and "1 skipped" in r.stdout, r.stdout + r.stderr
