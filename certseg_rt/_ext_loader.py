"""The compiled kernels (cpp_ext/, module ``certseg_rt._ext``), if this install has them.

``ext`` is the module or None; ``EXTENSION_STATUS`` says what it can do:
``{"cpu": built and importable, "cuda": compiled with the CUDA kernels}`` ("cuda" does not mean a GPU
is present: ``ext.cuda_device_count()`` asks the driver).  ``IMPORT_ERROR`` keeps the reason when the
import failed.  Importing this module never raises and never touches the CUDA runtime.
"""
from __future__ import annotations

from types import ModuleType

ext: ModuleType | None
IMPORT_ERROR: str | None = None

try:
    from certseg_rt import _ext as ext
except Exception as error:  # not built (pure-Python install), or built for another Python / platform
    ext = None
    IMPORT_ERROR = f"{type(error).__name__}: {error}"

EXTENSION_STATUS: dict[str, bool] = {
    "cpu": ext is not None,
    "cuda": bool(ext is not None and ext.cuda_compiled()),
}

__all__ = ["ext", "EXTENSION_STATUS", "IMPORT_ERROR"]
