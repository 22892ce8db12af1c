"""Factory segmenters: 'package.module:callable' or 'path/to/file.py:callable' + keyword arguments + weights.

A factory named in a file is loaded from that file alone (``importlib.util.spec_from_file_location``): no
package ``__init__`` runs, so a model file shipped inside a package whose ``__init__`` imports a GUI (napari's
Qt widgets) can be used without installing the GUI.  Its own folder is searched last for its sibling imports.

Weights are safetensors or a torch state dict (``.pt/.pth/.bin/.ckpt``, read with
``torch.load(weights_only=True)``: tensors and plain containers only, never code).  Checkpoints
often wrap the state dict (``{"state_dict": ...}``, ``{"model": ...}``, Lightning, ``torch.compile``)
or prefix its keys (``module.`` from DataParallel/DDP, ``model.``, ``_orig_mod.``): each layout is
tried, and a state dict that still does not fit is described (missing, unexpected, other shapes).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

from ...errors import CertsegError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params",
                "ema", "ema_state_dict")
KEY_PREFIXES = ("module.", "model.", "_orig_mod.", "net.", "network.")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
MODULE_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # package.module:callable
FILE_FACTORY = re.compile(r"(?P<file>.+\.py):(?P<attr>[A-Za-z_]\w*)")  # path/to/models.py:callable
_FILE_MODULES: dict[tuple, object] = {}  # (resolved path, mtime, size) -> module: a file runs once per process


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def is_factory_spec(spec: str) -> bool:
    return bool(MODULE_FACTORY.fullmatch(spec) or FILE_FACTORY.fullmatch(spec))


def factory_file(spec: str) -> Path | None:
    """The file of a 'path/to/file.py:callable' factory (None for 'package.module:callable')."""
    match = FILE_FACTORY.fullmatch(spec)
    return Path(match["file"]) if match else None


def load_factory(spec: str):
    """'package.module:callable' or 'path/to/file.py:callable' -> the callable."""
    match = FILE_FACTORY.fullmatch(spec)
    if match:
        module, attr, where = _module_from_file(Path(match["file"])), match["attr"], match["file"]
    else:
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise CertsegError(f"segmenter factory {spec!r} must look like 'package.module:callable' or "
                               f"'path/to/file.py:callable'")
        module, where = _import_module(module_name, spec, attr), module_name
    factory = getattr(module, attr, None)
    if factory is None:
        defined = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
                         and getattr(v, "__module__", None) == module.__name__)
        raise CertsegError(f"{where} defines no {attr!r} (it defines {', '.join(defined[:8]) or 'no callables'}); "
                           f"check the name after the colon")
    if not callable(factory):
        raise CertsegError(f"segmenter factory {spec!r} is a {type(factory).__name__}, not a callable")
    return factory


def _import_module(module_name: str, spec: str, attr: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        top = module_name.split(".")[0]
        if e.name and e.name.split(".")[0] != top:  # the package is there; something it imports is not
            raise CertsegError(f"importing {module_name} needs {e.name}, which is not installed: pip install "
                               f"{e.name.split('.')[0]}, or name the model's file alone (--segmenter "
                               f"'path/to/{module_name.split('.')[-1]}.py:{attr}': no package __init__ runs)")
        raise CertsegError(f"cannot import segmenter factory {spec!r} ({e}); install the package that defines it")
    except Exception as e:  # noqa: BLE001 - the package's own code failed on import (ImportError, a bug in it)
        raise CertsegError(f"cannot import segmenter factory {spec!r} ({type(e).__name__}: {_first_line(e)}); "
                           f"install or fix the package that defines it")


def _module_from_file(path: Path):
    """The module defined by one .py file, loaded without its package (once per process per file version)."""
    if not path.is_file():
        raise CertsegError(f"segmenter factory file {path} does not exist")
    resolved = path.resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    name = f"certseg_rt_user_{resolved.stem}_{hashlib.sha256(str(resolved).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and torch.export look classes up by their module
    sys.path.append(str(resolved.parent))  # searched last: the file's sibling modules, never shadowing packages
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[name]
        raise CertsegError(f"{path} has a syntax error at line {e.lineno}: {e.msg}; fix the file")
    except ModuleNotFoundError as e:
        del sys.modules[name]
        missing = e.name or str(e)
        raise CertsegError(f"{path} imports {missing}, which is not installed: pip install {missing.split('.')[0]}, "
                           f"or remove that import from the file")
    except Exception as e:  # noqa: BLE001 - the user's file failed while running its top level
        del sys.modules[name]
        raise CertsegError(f"running {path} failed ({type(e).__name__}: {_first_line(e)}); fix the file")
    finally:  # the entry appended above (the last one with that folder: the user's own stays where it was)
        del sys.path[len(sys.path) - 1 - sys.path[::-1].index(str(resolved.parent))]
    _FILE_MODULES[key] = module
    return module


def build_from_factory(spec: str, kwargs: dict | None):
    """Call the factory with `kwargs`, bound against its signature first so a misspelt name is named."""
    factory = load_factory(spec)
    kwargs = dict(kwargs or {})
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None  # a builtin without a signature: let the call say it
    if signature is not None:
        params = signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [k for k in kwargs if k not in named] if not takes_any else []
        if unknown:
            raise CertsegError(f"--segmenter-kwargs: {spec} has no parameter {', '.join(map(repr, unknown))} "
                               f"(it takes {', '.join(named) or 'none'}); fix the name")
        try:
            signature.bind(**kwargs)
        except TypeError as e:
            raise CertsegError(f"--segmenter-kwargs do not fit {spec}{signature} ({e}); add the missing arguments")
    try:
        module = factory(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's code: any error is a bad argument or a bad factory
        raise CertsegError(f"{spec}(**{kwargs}) failed ({type(e).__name__}: {_first_line(e)}); check "
                           f"--segmenter-kwargs")
    import torch

    if not isinstance(module, torch.nn.Module):
        raise CertsegError(f"{spec} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def read_state_dict(weights: Path) -> dict:
    """The tensors of a safetensors file or a torch checkpoint, as saved (wrappers still on)."""
    weights = Path(weights)
    if not weights.is_file():
        raise CertsegError(f"weights {weights} do not exist")
    if weights.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise CertsegError(f"cannot read weights {weights}: {_first_line(e)}; the file is missing or corrupt, "
                               f"re-export it")
    import warnings

    import torch

    from .torchscript import is_torchscript_archive, refused_class

    if is_torchscript_archive(weights):
        raise CertsegError(f"weights {weights} are a TorchScript model, which holds its architecture too: give it "
                           f"as --segmenter {weights}, without a factory or --segmenter-weights")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, corrupt zip, not a torch file...
        if cls := refused_class(e):
            raise CertsegError(f"weights {weights} hold a pickled {cls} (a whole module or other objects besides "
                               f"tensors), which certseg-rt never unpickles; save model.state_dict() with "
                               f"torch.save, or as safetensors")
        import zipfile

        why = _first_line(e) if zipfile.is_zipfile(weights) else "neither safetensors nor a torch.save file"
        raise CertsegError(f"cannot read weights {weights} ({why}); give a safetensors file or "
                           f"torch.save(model.state_dict(), path)")


def candidate_state_dicts(obj) -> list[tuple[str, dict]]:
    """(layout, state dict) for every layout the checkpoint may be in, the literal one first."""
    import torch

    found = []

    def unwrap(o, how: str, depth: int):
        if not isinstance(o, dict):
            return
        tensors = {k: v for k, v in o.items() if isinstance(v, torch.Tensor)}
        if tensors:
            found.append((how or "the file's tensors", tensors))
        if depth < 2:
            for key in WRAPPER_KEYS:
                if isinstance(o.get(key), dict):
                    unwrap(o[key], f"{how}[{key!r}]", depth + 1)
    unwrap(obj, "", 0)
    out = []
    for how, state in found:
        out.append((how, state))
        while prefix := next((p for p in KEY_PREFIXES if all(k.startswith(p) for k in state)), None):
            state = {k[len(prefix):]: v for k, v in state.items()}
            how = f"{how} without the {prefix!r} prefix"
            out.append((how, state))
    return out


def load_weights_into(module, weights: Path, what: str):
    """Load the checkpoint into `module` (strict), trying the usual wrappings; returns (module, layout)."""
    obj = read_state_dict(weights)
    candidates = candidate_state_dicts(obj)
    if not candidates:
        keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
        raise CertsegError(f"weights {weights} hold no state dict of tensors (found: {keys}); save "
                           f"model.state_dict()")
    expected = module.state_dict()

    def misfit(state):
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        return missing, unexpected, shapes

    scored = sorted(((sum(map(len, misfit(s))), i, how, s) for i, (how, s) in enumerate(candidates)))
    _, _, how, state = scored[0]
    missing, unexpected, shapes = misfit(state)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its tensors missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of other shapes (e.g. {k!r}: file {tuple(state[k].shape)}, model "
                         f"{tuple(expected[k].shape)})")
        raise CertsegError(f"weights {weights} ({how}) do not fit {what}: {', '.join(parts)}; check the factory "
                           f"and --segmenter-kwargs against the checkpoint's architecture")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CertsegError(f"weights {weights} do not fit {what} ({_first_line(e)}); check the factory and "
                           f"--segmenter-kwargs")
    return module, how
