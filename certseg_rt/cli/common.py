"""What every verb shares: one-line errors, the certification options, model and engine opening, progress."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from ..certify import DEFAULTS
from ..errors import CertsegError

REFERENCE_BATCH = 16  # the torch reference's batch when --batch-size is not given (an engine runs its optimum)


def user_errors(fn):
    """Turn the errors a user can cause into one line and exit 1, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CertsegError, ValueError) as e:
            raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except ModuleNotFoundError as e:
            raise click.ClickException(f"{e.name} is not installed; install it with "
                                       f"pip install 'certseg-rt[{EXTRA_OF.get(e.name, 'all')}]'")
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; nothing was written")
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):  # already what a user sees
            raise
        except Exception as e:  # noqa: BLE001 - a bug, still one line (CERTSEG_DEBUG=1 shows the traceback)
            if os.environ.get("CERTSEG_DEBUG"):
                raise
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise click.ClickException(f"internal error ({type(e).__name__}: {first}); this is a bug in certseg-rt: "
                                       f"please report the command (CERTSEG_DEBUG=1 shows the traceback)")
    return wrapper


EXTRA_OF = {"torch": "export", "diffusers": "export", "safetensors": "export", "onnx": "export",
             "onnxruntime": "cpu", "matplotlib": "plots", "tensorrt": "gpu", "nibabel": "nifti", "nrrd": "nrrd",
             "pydicom": "dicom", "mrcfile": "data"}


def smoothing_options(fn):
    """The certification parameters, shared by every verb that certifies."""
    opts = [
        click.option("--sigma", type=float, default=None,
                     help=f"std of the Gaussian smoothing noise in the [0, 1] image range  [default: "
                          f"{DEFAULTS['sigma']}, or the engine's]"),
        click.option("--tau", type=float, default=DEFAULTS["tau"], show_default=True,
                     help="class-probability threshold; radius = sigma * Phi^-1(tau)"),
        click.option("--alpha", type=float, default=DEFAULTS["alpha"], show_default=True,
                     help="family-wise error over all pixels of an image"),
        click.option("--n0", type=int, default=DEFAULTS["n0"], show_default=True, help="selection samples"),
        click.option("--n", "n", type=int, default=DEFAULTS["n"], show_default=True, help="estimation samples"),
        click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True, help="noise stream"),
        click.option("--batch-size", type=int, default=None,
                     help=f"samples per forward pass [default: the engine's optimum (build-engine --batch-sizes), "
                          f"{REFERENCE_BATCH} for the torch reference]"),
        click.option("--correction", type=click.Choice(["holm", "bonferroni"]), default=DEFAULTS["correction"],
                     show_default=True, help="multiple-testing correction over pixels"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def runtime_options(fn):
    """How the runtime may use this machine: threads, a memory budget (the batch is fitted to it), and where
    compiled models are cached (engines compiled at load: OpenVINO)."""
    opts = [
        click.option("--threads", type=int, default=None,
                     help="inference threads [default: the engine's (openvino), the library's (others)]"),
        click.option("--max-memory", default=None, metavar="SIZE",
                     help="memory budget, e.g. 2G or 512M: the batch is lowered to fit it  [default: half the "
                          "memory available now]"),
        click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
                     help="folder of the compiled-model cache (OpenVINO engines: the next process imports what this "
                          "one compiled)  [default: $CERTSEG_CACHE_DIR, else ~/.cache/certseg-rt]"),
        click.option("--no-cache", is_flag=True, help="compile the engine in this process and keep nothing"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def cache_choice(cache_dir: Path | None, no_cache: bool):
    """--cache-dir / --no-cache as the runtime takes them: a folder, None (the default folder) or False (none)."""
    if no_cache and cache_dir is not None:
        raise CertsegError("--cache-dir and --no-cache contradict each other; give one")
    return False if no_cache else cache_dir


def memory_budget(max_memory: str | None) -> int | None:
    """--max-memory in bytes (None: the runtime's default)."""
    if max_memory is None:
        return None
    from ..runtime.memory import parse_memory

    return parse_memory(max_memory)


def model_dir(model: str) -> Path:
    from ..zoo import ZOO_DIR, bundled_model_dir

    path = Path(model)
    if path.is_dir():
        return path
    if "/" in model or model.startswith("."):
        raise CertsegError(f"model directory {model} does not exist")
    try:
        return bundled_model_dir(model)
    except FileNotFoundError as e:
        raise CertsegError(f"{e}; or give a model directory (see {ZOO_DIR})")


def note(message: str) -> None:
    """A remark about the input that changes nothing certified (stderr, one line)."""
    click.echo(f"note: {message}", err=True)


def progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, leave=False, disable=None)


def certify_with_progress(backend, x, *, n0, n, tau, alpha, seed, correction, desc):
    from ..certify import certify as certify_image

    with progress(n0 + n, desc) as bar:
        backend.progress = bar.update
        try:
            return certify_image(backend, x, n0=n0, n=n, tau=tau, alpha=alpha, seed=seed, correction=correction)
        finally:
            backend.progress = None


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise CertsegError(f"invalid batch-size={batch_size}: must be an integer >= 1")


def open_backend(model: str, engine: Path | None, sigma: float | None, batch_size: int | None, denoiser: bool = True,
                 threads: int | None = None, max_memory: int | None = None, reference: str | None = None,
                 cache_dir=None, calls: tuple[int, ...] | None = None):
    """(backend, classes) for a reference runner on a model (default: the CPU torch reference; `reference` is
    RUNNER[:PRECISION[:LAYOUT|VARIANT]], e.g. torch-cuda-fused:fp16) or a built engine directory; an engine is made
    ready for calls of ``calls`` samples (n0 and n: compiled at open, or imported from the cache ``cache_dir``)."""
    check_batch_size(batch_size)
    if threads is not None and threads < 1:
        raise CertsegError(f"--threads {threads} must be >= 1 (omit it for the default)")
    if engine is not None:
        from ..runtime.segmenter import CertifiedSegmenter

        seg = CertifiedSegmenter.load(engine, batch_size=batch_size, threads=threads, max_memory=max_memory,
                                      cache_dir=cache_dir, calls=calls)
        seg._check_sigma(sigma)
        return seg.backend, seg.classes
    from ..runtime.backends import REFERENCES, open_model, parse_reference

    name, precision, layout, variant = parse_reference(reference or "torch-eager")
    default_batch = None if REFERENCES[name].gpu else REFERENCE_BATCH  # on a GPU the device memory decides
    backend = open_model(model_dir(model), DEFAULTS["sigma"] if sigma is None else sigma, name=name,
                         precision=precision, layout=layout, variant=variant, batch_size=batch_size or default_batch,
                         denoiser=denoiser, threads=threads, max_memory=max_memory)
    return backend, backend.source.classes


def intake_options(fn):
    """Which model to export: a model directory with any part replaced (all default to the bundled model)."""
    opts = [
        click.option("--model", default="chest", show_default=True, help="bundled model name or model directory"),
        click.option("--segmenter", default=None,
                     help="your segmenter: an ONNX file, a TorchScript file, or a factory with --segmenter-weights: "
                          "'package.module:factory', or 'path/to/models.py:factory' (that file alone)"),
        click.option("--segmenter-weights", type=click.Path(path_type=Path), default=None,
                     help="weights for a factory segmenter: .safetensors, or a torch state dict (.pt/.pth/.bin)"),
        click.option("--segmenter-kwargs", default=None, help="JSON keyword arguments for the factory"),
        click.option("--classes", default=None, help="comma-separated class names (index order)"),
        click.option("--denoiser", default=None, help="diffusers directory (unet/ + scheduler/), or 'none'"),
        click.option("--image-size", default=None, help="input size H or HxW the engine is built for"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def load_source_from_options(model, segmenter, segmenter_weights, segmenter_kwargs, classes, denoiser, image_size):
    from ..export.loaders import load_source

    size = None
    if image_size:
        try:
            parts = [int(v) for v in image_size.lower().split("x")]
            size = (parts[0], parts[-1]) if len(parts) in (1, 2) else None
        except ValueError:
            size = None
        if size is None or min(size) < 1:
            raise CertsegError(f"--image-size {image_size!r} must look like 128 or 128x160")
    try:
        kwargs = json.loads(segmenter_kwargs) if segmenter_kwargs else None
    except json.JSONDecodeError as e:
        raise CertsegError(f"--segmenter-kwargs is not valid JSON ({e})")
    source = load_source(model_dir(model), segmenter=segmenter, weights=segmenter_weights, kwargs=kwargs,
                         classes=classes.split(",") if classes else None, image_size=size, denoiser=denoiser)
    for line in source.notes:  # e.g. a denoiser trained at another size than the engine's
        note(line)
    return source

def check_writable(out: Path) -> None:
    """Refuse an output folder that cannot be created or written, before any work."""
    import os

    probe = Path(out)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise CertsegError(f"cannot write to {out}: {probe} is not a writable folder; choose another --out")


def progress_of(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="image", file=sys.stderr, disable=None)
