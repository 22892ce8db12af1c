"""Compiled models cached per user, checked before use: what makes a process's first certify a warm one.

A runner that compiles at load (OpenVINO: an IR reshaped to a static batch and compiled by the CPU plugin,
0.2-0.8 s per batch size here) keeps what it compiled in an entry of this cache, and the next process that
opens an engine with the same graph, shape and settings imports it instead.  The native runtime
(``cpp_ext/runtime/model_cache.cpp``) reads and writes the same entries.

Why not OpenVINO's own ``CACHE_DIR``: its blobs are keyed by a hash of the model and only some compile
properties (one blob served both the f32 and the bf16 compile of an IR here), and a blob whose content is
corrupt but whose header is intact is imported as it is: a byte flipped inside one gave logits off by 1e22
with no error (truncated blobs and another release's are rebuilt).  An entry here is

    certseg-rt compiled model 1\\n
    <sha256 of the payload, hex> <payload bytes> <key bytes>\\n
    <key: every input of the compile, one "name value" line each>
    <payload: the runner's exported compiled model>

and is used only when its key equals the one asked for, byte for byte, and its payload has its recorded
length and SHA-256; OpenVINO then checks its own header (release, CPU).  Anything else is ignored, and
overwritten by the fresh compile.  Entries are written whole (a temporary file, then a rename), so a reader
never sees half of one.  Nothing is written outside the cache folder.

The folder: ``cache_dir`` given (the CLI's ``--cache-dir``), else ``$CERTSEG_CACHE_DIR``, else the platform's
per-user cache (``$XDG_CACHE_HOME/certseg-rt``, ``~/.cache/certseg-rt``; macOS ``~/Library/Caches/certseg-rt``;
Windows ``%LOCALAPPDATA%/certseg-rt``), with one subfolder per runner; ``cache_dir=False`` (``--no-cache``)
turns it off.  A folder that cannot be written still serves the entries it has; the first failed write of a
process says so on stderr, once.  The cache is trusted as far as its folder is: the checksum catches
corruption, not someone who may write there (the default folder is the user's own, created 0700).
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

ENV = "CERTSEG_CACHE_DIR"
MAGIC = b"certseg-rt compiled model 1\n"
_noted: set[str] = set()  # folders whose unwritable state this process has reported
_UMASK = os.umask(0)
os.umask(_UMASK)


def note(message: str) -> None:
    """One line on stderr (tests capture it)."""
    print(f"note: {message}", file=sys.stderr)


def default_root() -> Path:
    """The platform's per-user cache folder for certseg-rt."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "certseg-rt"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "certseg-rt"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "certseg-rt"


def cache_root(cache_dir=None) -> Path | None:
    """The cache root: ``cache_dir`` (a folder; False: no cache), else $CERTSEG_CACHE_DIR, else the platform's."""
    if cache_dir is False:
        return None
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir)
    return Path(os.environ[ENV]) if os.environ.get(ENV) else default_root()


def key_text(fields: list[tuple[str, object]]) -> str:
    """The key: one 'name value' line per field, in the given order (the native runtime writes the same)."""
    return "".join(f"{name} {value}\n" for name, value in fields)


class ModelCache:
    """The entries of one runner (``root/<runner>``)."""

    def __init__(self, root: Path, runner: str):
        self.root = Path(root)
        self.folder = self.root / runner
        self.hits = self.misses = self.rejected = 0  # this process's lookups (tests and bench read them)

    def path(self, key: str) -> Path:
        return self.folder / (hashlib.sha256(key.encode()).hexdigest()[:40] + ".blob")

    def read(self, key: str) -> np.ndarray | None:
        """The payload of the entry for ``key`` (uint8, a private copy), or None: missing, unreadable, or not
        exactly what was written for this key."""
        path = self.path(key)
        try:
            data = np.fromfile(path, np.uint8)
        except OSError:  # missing (the usual miss), or unreadable
            self.misses += 1
            return None
        payload = self._check(data, key.encode())
        if payload is None:
            self.rejected += 1
            return None
        self.hits += 1
        return payload

    def refused(self) -> None:
        """The runner could not use the payload ``read`` returned (its library refused it): count a rejection."""
        self.hits, self.rejected = self.hits - 1, self.rejected + 1

    @staticmethod
    def _check(data: np.ndarray, key: bytes) -> np.ndarray | None:
        head = data[:len(MAGIC) + 200].tobytes()
        if not head.startswith(MAGIC) or b"\n" not in head[len(MAGIC):]:
            return None
        line, _, _ = head[len(MAGIC):].partition(b"\n")
        try:
            digest, size, key_size = line.decode("ascii").split(" ")
            size, key_size = int(size), int(key_size)
        except ValueError:
            return None
        start = len(MAGIC) + len(line) + 1
        if key_size != len(key) or data.size != start + key_size + size or \
                data[start:start + key_size].tobytes() != key:
            return None
        payload = data[start + key_size:]
        if hashlib.sha256(payload).hexdigest() != digest:
            return None
        return payload

    def write(self, key: str, payload) -> bool:
        """Store ``payload`` (bytes-like) under ``key``, whole or not at all; False (and a note, once per
        folder and process) when the folder cannot be written."""
        import tempfile

        payload = memoryview(payload).cast("B")
        header = MAGIC + f"{hashlib.sha256(payload).hexdigest()} {payload.nbytes} {len(key.encode())}\n".encode()
        tmp = None
        try:
            if not self.folder.is_dir():
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.folder.mkdir(mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".entry-", suffix=".tmp", dir=self.folder)
            os.chmod(tmp, 0o666 & ~_UMASK)  # an ordinary file (mkstemp's are private): the folder decides who reads
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                f.write(key.encode())
                f.write(payload)
            os.replace(tmp, self.path(key))
            tmp = None
        except OSError as e:
            if str(self.folder) not in _noted:
                _noted.add(str(self.folder))
                note(f"cannot write the compiled-model cache {self.folder} ({e.strerror or e}): compiled models are "
                     f"not kept for the next process; point --cache-dir or ${ENV} at a writable folder, or use "
                     f"--no-cache")
            return False
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
        return True
