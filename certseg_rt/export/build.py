"""Build an engine directory: ONNX graphs -> the backend's engine files + manifest.json, atomically.

The directory is assembled in a hidden sibling (``.NAME.building-PID-*``) and renamed into place at the
end, so a failed or interrupted build leaves nothing behind and never a half-written engine; what a
killed build (SIGKILL, power loss) left there is removed by the next build into the same place.  What is specific to a
backend (its optimisation, precision, engine files, parity against torch) is its builder module's
(``export/builders/``); this module does what every backend shares.
"""
from __future__ import annotations

import glob
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .. import __version__
from ..errors import CertsegError
from ..manifest import MANIFEST_NAME, hash_files, write_manifest
from .builders import BUILDERS, builder
from .loaders import SourceModel
from .memory import memory_profile
from .onnx_export import OPSET, export_onnx

BACKENDS = tuple(BUILDERS)
DEFAULT_BATCH_SIZES = (1, 16, 64)  # min, opt, max of the batch dimension


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_staging(out: Path) -> None:
    """Remove what an earlier build into `out` that was killed left beside it: its staging directory
    (``.NAME.building-PID-*``) and the engine it was replacing (``.NAME.old-PID``), unless that build's process is
    still running.  An engine whose replacement never landed (``out`` missing) is put back first."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    for kind in ("old", "building"):
        for path in sorted(out.parent.glob(f".{glob.escape(out.name)}.{kind}-*")):
            pid = path.name[len(f".{out.name}.{kind}-"):].split("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
                continue  # a build running now
            if kind == "old" and not out.exists() and (path / MANIFEST_NAME).is_file():
                os.replace(path, out)  # killed between moving the old engine aside and moving the new one in
                continue
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staged_directory(out: Path):
    """Yield an empty staging directory; on success it replaces `out`, on failure it is removed."""
    out = Path(out)
    try:
        remove_stale_staging(out)
    except OSError as e:
        raise CertsegError(f"cannot clean up after an earlier build into {out}: {e.strerror}; remove the hidden "
                           f".{out.name}.* folders beside it")
    if out.exists() and not out.is_dir():
        raise CertsegError(f"--out {out} exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise CertsegError(f"--out {out} is a non-empty directory that is not an engine directory; "
                           f"choose a new path (it would be replaced)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-{os.getpid()}-", dir=out.parent))
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it private; an engine directory is ordinary
    except OSError as e:
        raise CertsegError(f"cannot write to {out.parent}: {e.strerror}; choose a writable --out")
    try:
        yield stage
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def explain_export_failure():
    """torch's exporters raise many types on a network they cannot translate: one line that says what to try.
    Their own log (the TorchScript-based exporter prints the whole graph on a failure) stays off the terminal."""
    import torch

    # torch 2.13's TorchScript-based exporter turns its C++ log on whatever is asked (setup_onnx_logging tests the
    # function _jit_is_onnx_log_enabled, not its value) and writes the whole graph to stderr on a failure.
    onnx_log = getattr(torch._C, "_jit_onnx_log", None)
    if onnx_log is not None:
        torch._C._jit_onnx_log = lambda *args: None
    try:
        yield
    except (CertsegError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - RuntimeError, torch.onnx.errors.*, TorchExportError, onnx's errors
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CertsegError(f"torch cannot export the model to ONNX ({type(e).__name__}: {first}); try the other "
                           f"--exporter, or export the segmenter to ONNX yourself and pass --segmenter FILE.onnx")
    finally:
        if onnx_log is not None:
            torch._C._jit_onnx_log = onnx_log


def tool_versions() -> dict:
    """The export side's tools (each builder adds its backend's library to these)."""
    import onnx
    import torch

    versions = {"certseg_rt": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "onnx": onnx.__version__, "opset": OPSET}
    try:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return versions


def check_request(backend: str, precision: str, options: dict | None = None) -> None:
    """Refuse, in one line and before any heavy work, a build this machine cannot make."""
    builder(backend).check_request(precision, options or {})


def build_engine(source: SourceModel, sigma: float, out: Path, *, backend: str = "onnxruntime",
                 precision: str = "fp32", batch_sizes: tuple[int, int, int] = DEFAULT_BATCH_SIZES,
                 exporter: str = "torchscript", threads: int | None = None, parity: bool = True,
                 force: bool = False, memory_budget: int | None = None, options: dict | None = None,
                 log=print) -> dict:
    """Export, let the backend's builder make and check its engine, write the manifest; returns the manifest.

    Reduced precision changes the base model, so its labels need only agree with torch fp32 on 99% of
    pixels (fp32: 99.9%); below that the build fails unless `force`.  Either way the engine is what
    gets certified.  A graph with a fixed batch dimension B gets an engine for exactly B.  The parity
    check runs inside the engine's batch range and `memory_budget` bytes (``export.parity``).
    ``precision="auto"`` (builders with ``native_precisions``: OpenVINO) builds each precision this CPU runs
    natively and keeps the fastest that passes parity, measured here (``export/auto_precision.py``).
    """
    make = builder(backend)
    if precision == "auto":
        if not hasattr(make, "native_precisions"):
            raise CertsegError(f"--precision auto is available for --backend openvino; name a precision for "
                               f"{backend} (one of {', '.join(make.PRECISIONS)})")
        if not parity or force:
            raise CertsegError("--precision auto keeps the fastest precision whose parity with torch passes, so it "
                               "runs the parity check: drop --no-parity and --force, or name a --precision")
        make.check_request("fp32", options or {})  # what every candidate needs
    else:
        make.check_request(precision, options or {})
    lo, opt, hi = batch_sizes
    if not 1 <= lo <= opt <= hi:
        raise CertsegError(f"--batch-sizes {lo},{opt},{hi} must satisfy 1 <= MIN <= OPT <= MAX")
    if threads is not None and threads < 1:
        raise CertsegError(f"--threads {threads} must be >= 1 (omit it to use all cores)")
    if memory_budget is not None and memory_budget <= 0:
        raise CertsegError("--memory-budget must be > 0 (omit it to use half the available memory)")
    threads = threads or os.cpu_count() or 1
    with staged_directory(out) as stage:
        log(f"exporting ONNX graphs ({exporter}, opset {OPSET})")
        with explain_export_failure():
            graphs = export_onnx(source, sigma, stage, exporter=exporter, parity=False, batch=opt, log=log)
        if graphs.fixed_batch:
            b = graphs.fixed_batch
            if (lo, opt, hi) != (b, b, b):
                pads = f"; certification pads a call's last batch up to {b}" if b > 1 else ""
                log(f"note: the segmenter graph has a fixed batch of {b}: building an engine for exactly batch {b} "
                    f"(not --batch-sizes {lo},{opt},{hi}){pads}")
            lo = opt = hi = b

        def manifest_fields(chosen: str, fields: dict) -> dict:
            """The manifest of an engine of precision ``chosen`` whose builder returned ``fields``."""
            return {
                "backend": backend,
                "precision": chosen,
                "sigma": sigma,
                "denoiser": None if graphs.metadata["denoiser"] is None else {
                    **graphs.metadata["denoiser"], "graph": graphs.denoiser.name},
                "classes": source.classes,
                "modality": source.modality,
                "input": graphs.metadata["input"],
                "adapter": graphs.metadata["adapter"],  # image -> noise space (adapters.py); null: none
                "batch_sizes": {"min": lo, "opt": opt, "max": hi, **({"fixed": True} if graphs.fixed_batch else {})},
                "exporter": exporter,
                "graphs_made": graphs.made,
                "source_model_files": hash_files(source.files),
                "intake": source.intake,
                "memory": memory,
                **fields,
                "tools": {**tool_versions(), **fields.get("tools", {})},
            }

        memory = memory_profile(source, sigma) if source.segmenter is not None else None
        opts = {**(options or {}), "out": out, "memory_budget": memory_budget}
        if precision == "auto":
            from .auto_precision import build_auto

            precision, fields = build_auto(make, stage, graphs, source=source, sigma=sigma, batch_sizes=(lo, opt, hi),
                                           threads=threads, options=opts, log=log, manifest_fields=manifest_fields)
        else:
            fields = make.build(stage, graphs, source=source, sigma=sigma, precision=precision,
                                batch_sizes=(lo, opt, hi), threads=threads, parity=parity, force=force, options=opts,
                                log=log)
        if not parity:
            fields["parity"] = {"skipped": True, "reason": "--no-parity: the graphs were not compared with torch"}
        manifest = write_manifest(stage, manifest_fields(precision, fields))
    return manifest
