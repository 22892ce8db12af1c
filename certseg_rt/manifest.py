"""The engine directory's manifest: what was built, from what, by which tools; hashes of every file.

The manifest is the only contract between export/ and runtime/.  Loading checks it before any
model file is parsed: every listed file must exist inside the directory and hash as recorded.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import CertsegError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
REQUIRED = ("format_version", "backend", "precision", "sigma", "classes", "input", "batch_sizes", "files", "tools")
REBUILD = "rebuild it with `certseg-rt build-engine --out DIR`"


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
    if verify_hashes:
        for name, digest in manifest["files"].items():
            file = _inside(engine_dir, name)
            if not file.is_file():
                raise CertsegError(f"engine file {name} listed in the manifest is missing from {engine_dir}; {REBUILD}")
            if sha256_file(file) != digest:
                raise CertsegError(f"engine file {name} changed since it was built (sha256 mismatch in field "
                                   f"files.{name}); {REBUILD}")
    return manifest


def write_manifest(engine_dir: Path, manifest: dict) -> dict:
    """Hash every file in engine_dir into manifest["files"] and write manifest.json."""
    from .io import write_json

    manifest = {"format_version": FORMAT_VERSION, **manifest, "files": hash_directory(engine_dir)}
    write_json(Path(engine_dir) / MANIFEST_NAME, manifest)
    return manifest
