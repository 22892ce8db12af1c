"""TorchScript segmenters (``torch.jit.script`` or ``torch.jit.trace``, saved with ``torch.jit.save``).

A ``.pt`` file is often not TorchScript: ``torch.save(model.state_dict())`` (weights only) or
``torch.save(model)`` (a pickled module).  Those are told apart with ``torch.load(weights_only=True)``,
which never unpickles code, so the message can show the route that does take them.
"""
from __future__ import annotations

import re
from pathlib import Path

from ...errors import CertsegError

FACTORY_ROUTE = ("--segmenter package.module:factory --segmenter-weights {path} [--segmenter-kwargs JSON] "
                 "(the factory builds the architecture, the file gives its weights)")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def is_torchscript_archive(path: Path) -> bool:
    """A torch.jit.save zip (it holds code/ and constants.pkl; a torch.save zip holds data.pkl alone)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def refused_class(error: Exception) -> str | None:
    """The class torch.load(weights_only=True) refused to unpickle ('package.Class'), if that is what `error` says."""
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    return match.group(1) if match else None


def what_torch_file_is(path: Path) -> str | None:
    """'state dict' or 'pickled X' for a torch.save file that is not TorchScript; None otherwise."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, BadZipFile, RuntimeError...
        cls = refused_class(e)  # weights_only refused a class: a whole module, an optimizer...
        return f"pickled {cls}" if cls else None
    return "state dict" if isinstance(obj, dict) else None


def load_torchscript(path: Path):
    import torch

    path = Path(path)
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as e:
        error = e
    kind = what_torch_file_is(path)
    if kind == "state dict":
        raise CertsegError(f"--segmenter {path} is a state dict (weights only, torch.save(model.state_dict())), "
                           f"not a TorchScript model; give its architecture as a factory: "
                           f"{FACTORY_ROUTE.format(path=path)}")
    if kind is not None and kind.startswith("pickled"):
        raise CertsegError(f"--segmenter {path} is a {kind} object (torch.save(model)), which certseg-rt "
                           f"never unpickles; save torch.jit.script(model) with torch.jit.save, or save "
                           f"model.state_dict() and use {FACTORY_ROUTE.format(path='FILE')}")
    import zipfile

    why = _first_line(error) if zipfile.is_zipfile(path) else "not a TorchScript archive: torch.jit.save writes a zip"
    raise CertsegError(f"cannot load TorchScript segmenter {path} ({why}); save it with "
                       f"torch.jit.save(torch.jit.script(model), path)")
