"""The compiled kernels (cpp_ext/, module ``certseg_rt._ext``), if this install has them.

``ext`` is the module or None; ``EXTENSION_STATUS`` says what it can do:
``{"cpu": built and importable, "cuda": compiled with the CUDA kernels}`` ("cuda" does not mean a GPU
is present: ``ext.cuda_device_count()`` asks the driver).  ``IMPORT_ERROR`` keeps the reason when the
import failed.  Importing this module never raises and never touches the CUDA runtime.

A pure-Python install (no extension at all) is legitimate: the numpy kernels give the same numbers.  A build
that compiled the extension and cannot import it is not: the build writes ``_ext_built.json`` beside the module
(cpp_ext/CMakeLists.txt), and where that marker exists and the import fails, ``BUILT_BUT_BROKEN`` is True and a
line on stderr says why and how to rebuild (tests/test_extension_required.py fails on it too).
"""
from __future__ import annotations

import json
import os
import sys
from types import ModuleType

BUILD_MARKER = "_ext_built.json"

ext: ModuleType | None
IMPORT_ERROR: str | None = None


def _build_marker() -> dict | None:
    """What the build wrote beside the extension ({"path", "module", "cuda"}), or None where it compiled none."""
    package = sys.modules.get(__name__.rpartition(".")[0])
    for folder in getattr(package, "__path__", None) or []:  # an editable install spans two folders
        path = os.path.join(folder, BUILD_MARKER)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    return {**json.load(f), "path": path}
            except (OSError, ValueError):  # an unreadable marker still says the build compiled the extension
                return {"path": path}
    return None


try:
    from certseg_rt import _ext as ext
except Exception as error:  # not built (pure-Python install), or built for another Python / platform
    ext = None
    IMPORT_ERROR = f"{type(error).__name__}: {error}"

BUILD = _build_marker()
BUILT_BUT_BROKEN = BUILD is not None and ext is None
if BUILT_BUT_BROKEN:
    print(f"certseg-rt: warning: the compiled extension {BUILD.get('module', 'certseg_rt._ext')} was built for this "
          f"install but cannot be loaded ({IMPORT_ERROR}); running on the numpy kernels (same numbers, slower). "
          f"Rebuild it: pip install --force-reinstall --no-deps --no-build-isolation certseg-rt "
          f"(in a checkout: pip install --no-build-isolation -e .)", file=sys.stderr)

EXTENSION_STATUS: dict[str, bool] = {
    "cpu": ext is not None,
    "cuda": bool(ext is not None and ext.cuda_compiled()),
}

__all__ = ["BUILD", "BUILT_BUT_BROKEN", "EXTENSION_STATUS", "IMPORT_ERROR", "ext"]
