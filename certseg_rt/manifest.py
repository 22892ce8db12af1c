"""The engine directory's manifest: what was built, from what, by which tools; hashes of every file.

The manifest is the only contract between export/ and runtime/.  Loading checks it before any
model file is parsed: every listed file must exist inside the directory and hash as recorded.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from .adapters import adapter_from_manifest
from .errors import REBUILD, CertsegError  # noqa: F401  (REBUILD: runners import it from here too)

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
REQUIRED = ("format_version", "backend", "precision", "sigma", "classes", "input", "batch_sizes", "files", "tools")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_files(files: dict[str, Path]) -> dict[str, str]:
    """{name: sha256} for named files."""
    return {name: sha256_file(Path(path)) for name, path in sorted(files.items())}


def hash_directory(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root except the manifest itself."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST_NAME}


def _inside(root: Path, name: str) -> Path:
    path = (root / name).resolve()
    if Path(name).is_absolute() or root.resolve() not in path.parents:
        raise CertsegError(f"engine manifest lists file {name!r} outside the engine directory; {REBUILD}")
    return path


def load_manifest(engine_dir: Path, verify_hashes: bool = True) -> dict:
    """Read and check an engine directory's manifest; raise CertsegError naming the field and the fix."""
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise CertsegError(f"engine directory {engine_dir} does not exist; build one with "
                           f"`certseg-rt build-engine --out {engine_dir}`")
    path = engine_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CertsegError(f"{engine_dir} has no {MANIFEST_NAME}, so it is not an engine directory; {REBUILD}")
    except OSError as e:
        raise CertsegError(f"cannot read {path} ({e.strerror}); {REBUILD}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CertsegError(f"{path} is not valid JSON ({e}); {REBUILD}")
    if not isinstance(manifest, dict):
        raise CertsegError(f"{path} is not a JSON object; {REBUILD}")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise CertsegError(f"{path} lacks field(s) {', '.join(missing)}; {REBUILD}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise CertsegError(f"{path} has format_version {manifest['format_version']!r}, this certseg-rt reads "
                           f"{FORMAT_VERSION}; {REBUILD}")
    _check_fields(manifest, path)
    if verify_hashes:
        for name, digest in manifest["files"].items():
            file = _inside(engine_dir, name)
            if not file.is_file():
                raise CertsegError(f"engine file {name} listed in the manifest is missing from {engine_dir}; {REBUILD}")
            if sha256_file(file) != digest:
                raise CertsegError(f"engine file {name} changed since it was built (sha256 mismatch in field "
                                   f"files.{name}); {REBUILD}")
    return manifest


def _check_fields(m: dict, path: Path) -> None:
    """The types and ranges the runtime relies on, so a hand-edited manifest fails here in one line."""
    def bad(field, rule):
        raise CertsegError(f"{path} field {field} {rule}; {REBUILD}")

    def positive_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    files = m["files"]
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        bad("files", "must map file names to sha256 digests")
    for name in ("backend", "precision"):
        if not isinstance(m[name], str):
            bad(name, "must be a string")
    sigma = m["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        bad("sigma", f"is {sigma!r}; it must be a number > 0")
    classes = m["classes"]
    if not isinstance(classes, list) or not 1 <= len(classes) <= 255 or not all(isinstance(c, str) for c in classes):
        bad("classes", "must list 1 to 255 class names")
    inp = m["input"]
    if not isinstance(inp, dict) or not all(positive_int(inp.get(k)) for k in ("channels", "height", "width")):
        bad("input", "must give channels, height and width as integers >= 1")
    sizes = m["batch_sizes"]
    if not isinstance(sizes, dict) or not all(positive_int(sizes.get(k)) for k in ("min", "opt", "max")) \
            or not sizes["min"] <= sizes["opt"] <= sizes["max"]:
        bad("batch_sizes", "must give integers 1 <= min <= opt <= max")
    if not isinstance(m["tools"], dict):
        bad("tools", "must be an object")
    adapter_from_manifest(m)  # field adapter: null, or a replication that fits input.channels
    graphs = m.get("graphs", {})
    # Only files whose hashes were checked may be loaded: every graph must be listed in files.
    if not isinstance(graphs, dict) or \
            not all(v is None or (isinstance(v, str) and v in files) for v in graphs.values()):
        bad("graphs", "must name files listed in field files")


def write_manifest(engine_dir: Path, manifest: dict) -> dict:
    """Hash every file in engine_dir into manifest["files"] and write manifest.json."""
    from .io import write_json

    manifest = {"format_version": FORMAT_VERSION, **manifest, "files": hash_directory(engine_dir)}
    write_json(Path(engine_dir) / MANIFEST_NAME, manifest)
    return manifest
