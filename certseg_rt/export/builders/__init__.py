"""Builders: one module per backend, registered by name (the loader half of Polygraphy's loader/runner split).

A builder module defines

* ``PRECISIONS``: what ``--precision`` may be for it;
* ``check_request(precision, options)``: refuse, in one line, a build this machine cannot make (a missing
  library or device, a precision the backend cannot run here), before anything is exported;
* ``build(stage, graphs, *, source, sigma, precision, batch_sizes, threads, parity, force, options, log)``:
  turn the exported fp32 ONNX graphs in the staging directory into its engine files there, check their
  labels against torch fp32 (``parity``), and return the manifest fields it owns (``graphs``, ``parity``,
  its settings, ``tools`` additions).

The runtime side of each backend is ``certseg_rt.runtime.backends.<module>``.  Builder modules are
imported only when a build asks for them.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ...errors import CertsegError

BUILDERS: dict[str, str] = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}


def builder(backend: str) -> ModuleType:
    if backend not in BUILDERS:
        raise CertsegError(f"--backend must be one of {', '.join(BUILDERS)}, got {backend!r}")
    return importlib.import_module(f"{__name__}.{BUILDERS[backend]}")


def all_precisions() -> tuple[str, ...]:
    """Every precision some builder takes (the CLI's choices; each builder refuses the others)."""
    return ("fp32", "fp16", "bf16", "int8")
