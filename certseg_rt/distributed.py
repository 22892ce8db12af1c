"""Certify a dataset on a Ray cluster: the per-image work of ``certseg-rt evaluate`` on Ray Data actors.

The driver (the machine running ``certseg-rt evaluate --ray``) keeps everything that touches the
results folder: it decides which images are not done yet, and writes each record atomically as it
arrives, so a run can be resumed by either mode and the tables are built exactly as on one machine.
The workers only compute:

    driver                                       workers (one Ray actor each, Ray Data map_batches)
    ──────                                       ──────────────────────────────────────────────────
    check the engine / model directory           __init__: open the backend ONCE (CertifiedSegmenter.load
    ship its files (object store, once)   ──>              or the torch reference) from the shipped files
    ray.data.from_items(pending images,   ──>    __call__: per image evaluate_sample -> the record (JSON),
      with their bytes)                                    or the reason it failed
    write records, tables, plots          <──

Nothing has to be on the workers but certseg-rt itself: the engine or model directory and the
images travel through Ray's object store (a worker uses its own copy of the directory when it has
an identical one at the same path; otherwise one copy per machine under $TMPDIR/certseg-rt-ray/).
The driver reads the pending images into memory to ship them: fine for datasets of a few GB.
Noise is keyed by (seed, sample index), never by worker, so a record computed on a cluster equals
the one computed here.  A TensorRT engine asks one GPU per
actor; everything else asks ``cpus`` CPUs per actor and runs that many threads.

Fault handling: an image that cannot be evaluated (missing mask, unreadable file, wrong size)
is a failure of that image, reported as on one machine.  A worker that cannot open the backend
ends the run with the worker's one-line reason; Ray's own retries cover lost workers.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import CertsegError

# How many images one actor takes per call: one, so that records stream back as they finish.
_ROWS_PER_CALL = 1


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise CertsegError("Ray is not installed; pip install 'certseg-rt[ray]' (on every machine of the cluster)")
    return ray


@contextlib.contextmanager
def ray_session(address: str):
    """Connect to the Ray cluster at `address` ("auto", "local", "HOST:PORT", "ray://HOST:PORT").

    When this process is already connected (ray.init was called, e.g. by a test) that connection is
    used and left open; otherwise the connection made here is closed on exit.
    """
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        if address not in ("auto", "local"):
            _check_reachable(address)  # ray.init would retry an unreachable head for minutes
        # Ray's own notices (its C++ core's log, workers' output) would bury certseg-rt's progress and
        # errors on stderr; problems are reported by certseg-rt itself, one line each.  Set
        # RAY_BACKEND_LOG_LEVEL=info to see the core's log again.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     logging_level=logging.ERROR, log_to_driver=False)
        except ConnectionError as e:
            hint = ("start one with `ray start --head` (or give its address), or use --ray local to start one "
                    "in this process") if address == "auto" else "check the address and that `ray start` runs there"
            raise CertsegError(f"no Ray cluster at {address} ({str(e).splitlines()[0][:160]}); {hint}")
        except (ValueError, RuntimeError) as e:
            raise CertsegError(f"cannot connect to Ray at {address}: {str(e).splitlines()[0][:200]}")
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # certseg-rt shows its own progress
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str) -> None:
    import socket

    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CertsegError(f"--ray {address!r}: give the head's HOST:PORT (e.g. 10.0.0.1:6379), 'auto' or 'local'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise CertsegError(f"cannot reach the Ray head at {address} ({e.strerror or e}); start it there with "
                           f"`ray start --head`, or check the address and the firewall")


# ---------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """What the workers open: an engine directory or a model directory (torch reference), checked here."""

    kind: str  # "engine" or "model"
    path: str  # the directory on the driver
    sigma: float
    classes: tuple[str, ...]
    channels: int
    batch_size: int
    denoiser: bool = True
    gpu: bool = False  # one GPU per actor (TensorRT engines)
    max_memory: int | None = None  # memory budget per worker (bytes; None: half of what the worker has)


def engine_target(engine: Path, sigma: float | None, batch_size: int | None, max_memory: int | None = None) -> Target:
    """Check an engine directory on the driver (manifest, hashes, sigma, batch size) before any worker starts."""
    from .manifest import load_manifest
    from .runtime.backends import RUNNERS, runner

    manifest = load_manifest(engine)
    kind = manifest["backend"]
    runner(kind)  # one line if this runtime cannot run it
    built = float(manifest["sigma"])
    if sigma is not None and not np.isclose(sigma, built, rtol=0, atol=1e-12):
        raise CertsegError(f"--sigma {sigma} differs from the engine's sigma {built} (manifest field sigma; the "
                           f"denoiser's timestep depends on it); rebuild with `certseg-rt build-engine --sigma "
                           f"{sigma}` or omit --sigma")
    sizes = manifest["batch_sizes"]
    batch_size = batch_size or sizes["opt"]  # not given: the engine's optimum
    if not RUNNERS[kind].gpu and not sizes.get("fixed") and not sizes["min"] <= batch_size <= sizes["max"]:
        raise CertsegError(f"batch size {batch_size} is outside the engine's range {sizes['min']}..{sizes['max']}")
    from .adapters import image_channels

    return Target("engine", str(Path(engine).resolve()), built, tuple(manifest["classes"]),
                  image_channels(manifest), batch_size, gpu=RUNNERS[kind].gpu, max_memory=max_memory)


def model_target(model_dir: Path, sigma: float, batch_size: int, denoiser: bool,
                 max_memory: int | None = None) -> Target:
    """Check a model directory on the driver (segmenter.json, denoiser/) without loading torch."""
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / "segmenter.json").read_text())
        classes, channels = tuple(config["classes"]), int(config["input"]["channels"])
    except FileNotFoundError:
        raise CertsegError(f"{model_dir} is not a model directory: it has no segmenter.json")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise CertsegError(f"{model_dir}/segmenter.json is not a valid model config ({type(e).__name__}: {e})")
    if denoiser and not (model_dir / "denoiser").is_dir():
        raise CertsegError(f"{model_dir} has no denoiser/; give --no-denoiser for plain randomized smoothing")
    return Target("model", str(model_dir.resolve()), float(sigma), classes, channels, batch_size, denoiser,
                  max_memory=max_memory)


def _open(target: Target, root: Path, threads: int):
    """(backend, clean segmenter) on a worker, from the directory's local copy `root`."""
    if target.kind == "engine":
        from .runtime.segmenter import CertifiedSegmenter

        seg = CertifiedSegmenter.load(root, batch_size=target.batch_size, threads=threads,
                                      max_memory=target.max_memory)
        return seg.backend, seg.segment
    from .runtime.backends import open_model

    backend = open_model(root, target.sigma, batch_size=target.batch_size, denoiser=target.denoiser,
                         threads=threads, max_memory=target.max_memory)
    return backend, backend.segment


# ---------------------------------------------------------------------------------- shipped directories


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ShippedDir:
    """A directory's files in Ray's object store, put there once by the driver."""

    origin: str
    hashes: tuple[tuple[str, str], ...]  # (relative path, sha256), sorted
    ref: object  # ObjectRef of {relative path: bytes}

    @property
    def digest(self) -> str:
        return _sha256(json.dumps(self.hashes).encode())

    def local(self) -> Path:
        """The directory on this machine: the origin when it is identical here, else a copy from the object store."""
        from .manifest import sha256_file

        origin = Path(self.origin)
        with contextlib.suppress(OSError):
            here = sorted(p.relative_to(origin).as_posix() for p in origin.rglob("*") if _shipped(p))
            if here == [name for name, _ in self.hashes] and all(
                    sha256_file(origin / name) == digest for name, digest in self.hashes):
                return origin
        import ray

        cache = Path(tempfile.gettempdir()) / "certseg-rt-ray" / self.digest[:24] / origin.name
        if cache.is_dir():
            return cache
        cache.parent.parent.mkdir(parents=True, exist_ok=True)
        incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=cache.parent.parent))
        for name, data in ray.get(self.ref).items():
            (incoming / origin.name / name).parent.mkdir(parents=True, exist_ok=True)
            (incoming / origin.name / name).write_bytes(data)
        try:
            os.rename(incoming, cache.parent)  # atomic: actors on one machine share one complete copy
        except OSError:  # another actor was faster
            shutil.rmtree(incoming, ignore_errors=True)
        return cache


def _shipped(path: Path) -> bool:
    return path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"


def ship_directory(ray, path: Path) -> ShippedDir:
    path = Path(path)
    files = {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if _shipped(p)}
    hashes = tuple(sorted((name, _sha256(data)) for name, data in files.items()))
    return ShippedDir(str(path.resolve()), hashes, ray.put(files))


# -------------------------------------------------------------------------------------------- workers


class Evaluator:
    """One Ray actor: opens the backend once, then evaluates the images it is given, one record each.

    Never raises: a failure to open the backend and any error on an image come back as results, so
    the driver can report them in one line (Ray would otherwise print the workers' tracebacks).
    """

    def __init__(self, target: Target, shipped: ShippedDir, params: dict, threads: int):
        self.target, self.params = target, params
        self.fatal = None
        try:
            self.backend, self.clean_fn = _open(target, shipped.local(), threads)
        except (CertsegError, ValueError, OSError) as e:
            self.fatal = _first_line(e)
        except Exception as e:  # noqa: BLE001 - reported to the driver, which stops the run
            self.fatal = f"{type(e).__name__}: {_first_line(e)}"

    def __call__(self, batch: dict) -> dict:
        return {"payload": np.array([json.dumps(self._one({k: v[i] for k, v in batch.items()}))
                                     for i in range(len(batch["index"]))], dtype=object)}

    def _one(self, item: dict) -> dict:
        from .evaluate import Sample, evaluate_sample

        index = int(item["index"])
        if self.fatal is not None:
            return {"index": index, "fatal": self.fatal}
        scratch = Path(tempfile.mkdtemp(prefix="certseg-rt-image-"))  # this image's files, removed after
        image = scratch / "images" / str(item["image_name"])
        mask = scratch / "masks" / str(item["mask_name"]) if item["has_mask"] else None
        try:
            for path, data in ((image, item["image"]), (mask, item["mask"])):
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(bytes(data))
            try:
                rec = evaluate_sample(Sample(str(item["name"]), image, mask), self.backend, self.clean_fn,
                                      list(self.target.classes), sigma=self.target.sigma, **self.params)
            except (CertsegError, ValueError) as e:
                # The message names the file as the driver knows it, exactly as a run on one machine does.
                reason = _first_line(e).replace(str(image), str(item["image_path"]))
                if mask is not None:
                    reason = reason.replace(str(mask), str(item["mask_path"]))
                return {"index": index, "reason": reason}
            labels = rec.pop("_labels")
            out = {"index": index, "record": rec}
            if item["labels"]:
                out["labels"] = base64.b64encode(np.ascontiguousarray(labels, np.uint8).tobytes()).decode()
                out["shape"] = list(labels.shape)
            return out
        except Exception as e:  # noqa: BLE001 - not an input problem: the driver stops the run
            return {"index": index, "fatal": f"{type(e).__name__}: {_first_line(e)}"}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------------------------- driver


@dataclass
class Outcome:
    index: int  # into the list of samples given
    record: dict | None = None  # as evaluate_sample returns it, without the labels
    reason: str | None = None  # why this image failed (an input problem)
    labels: np.ndarray | None = None  # when asked for (overlays)


def evaluate_on_ray(ray, samples: list, target: Target, params: dict, *, cpus: float = 1.0,
                    workers: int | None = None, labels_for: set[int] = frozenset()) -> Iterator[Outcome]:
    """Evaluate `samples` (evaluate.Sample) on the connected Ray cluster; yield outcomes as they finish.

    `params` are evaluate_sample's n0, n, tau, alpha, seed, correction.  `labels_for`: indices whose
    certified labels are returned too.  Raises CertsegError when a worker cannot open the backend.
    """
    if not samples:
        return
    if cpus <= 0 or (workers is not None and workers < 1):
        raise CertsegError("--ray-cpus must be > 0 and --ray-workers >= 1")
    resources = ray.cluster_resources()
    if target.gpu:
        capacity = int(resources.get("GPU", 0))
        if capacity < 1:
            raise CertsegError("a TensorRT engine needs one GPU per Ray worker, and this Ray cluster has no GPU; "
                               "add GPU machines or evaluate an ONNX Runtime engine")
    else:
        capacity = int(resources.get("CPU", 1) // cpus)
    size = max(1, min(len(samples), workers or capacity))
    items = []
    for i, s in enumerate(samples):
        items.append({"index": i, "name": s.name, "image_name": s.image.name, "image_path": str(s.image),
                      "image": Path(s.image).read_bytes(), "labels": i in labels_for,
                      # No None in the columns: Ray Data turns a missing string into NaN.
                      "has_mask": s.mask is not None, "mask_name": s.mask.name if s.mask else "",
                      "mask_path": str(s.mask) if s.mask else "", "mask": Path(s.mask).read_bytes() if s.mask else b""})
    shipped = ship_directory(ray, Path(target.path))
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    resources = {"num_gpus": 1, "num_cpus": cpus} if target.gpu else {"num_cpus": cpus}
    results = dataset.map_batches(
        Evaluator, batch_size=_ROWS_PER_CALL, compute=ray.data.ActorPoolStrategy(size=size),
        fn_constructor_kwargs={"target": target, "shipped": shipped, "params": params,
                               "threads": max(1, int(cpus))},
        **resources)
    try:
        for row in results.iter_rows():
            out = json.loads(row["payload"])
            if "fatal" in out:
                raise CertsegError(f"a Ray worker failed: {out['fatal']}")
            labels = None
            if "labels" in out:
                labels = np.frombuffer(base64.b64decode(out["labels"]), np.uint8).reshape(out["shape"])
            yield Outcome(out["index"], out.get("record"), out.get("reason"), labels)
    except CertsegError:
        raise
    except Exception as e:
        from ray.exceptions import RayError

        if isinstance(e, RayError):
            raise CertsegError(f"the Ray cluster failed: {type(e).__name__}: {_first_line(e)[:200]}")
        raise
