"""certseg-rt command line: verbs are the user's jobs.  Progress on stderr, results on stdout.

Exit codes: 0 success, 1 error (one line naming the problem and the fix), 2 usage.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click
import numpy as np

from . import __version__
from .certify import DEFAULTS, check_parameters
from .errors import CertsegError


def _user_errors(fn):
    """Turn the errors a user can cause into one line and exit 1, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CertsegError, ValueError) as e:
            raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except ModuleNotFoundError as e:
            raise click.ClickException(f"{e.name} is not installed; install it with "
                                       f"pip install 'certseg-rt[{_EXTRA_OF.get(e.name, 'all')}]'")
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; nothing was written")
    return wrapper


_EXTRA_OF = {"torch": "export", "diffusers": "export", "safetensors": "export", "onnx": "export",
             "onnxruntime": "cpu", "matplotlib": "plots", "tensorrt": "gpu"}


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
        click.option("--batch-size", type=int, default=16, show_default=True, help="samples per forward pass"),
        click.option("--correction", type=click.Choice(["holm", "bonferroni"]), default=DEFAULTS["correction"],
                     show_default=True, help="multiple-testing correction over pixels"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _model_dir(model: str) -> Path:
    from .zoo import ZOO_DIR, bundled_model_dir

    path = Path(model)
    if path.is_dir():
        return path
    if "/" in model or model.startswith("."):
        raise CertsegError(f"model directory {model} does not exist")
    try:
        return bundled_model_dir(model)
    except FileNotFoundError as e:
        raise CertsegError(f"{e}; or give a model directory (see {ZOO_DIR})")


def _note(message: str) -> None:
    """A remark about the input that changes nothing certified (stderr, one line)."""
    click.echo(f"note: {message}", err=True)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, leave=False, disable=None)


def _certify_with_progress(backend, x, *, n0, n, tau, alpha, seed, correction, desc):
    from .certify import certify as certify_image

    with _progress(n0 + n, desc) as bar:
        backend.progress = bar.update
        try:
            return certify_image(backend, x, n0=n0, n=n, tau=tau, alpha=alpha, seed=seed, correction=correction)
        finally:
            backend.progress = None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="certseg-rt")
def main():
    """Certified medical image segmentation: randomized smoothing with a one-step DDPM denoiser.

    \b
    Example:
      certseg-rt demo
      certseg-rt certify scan.png --out mask.png --json
    """


def _open_backend(model: str, engine: Path | None, sigma: float | None, batch_size: int, denoiser: bool = True):
    """(backend, classes) for the torch reference (a model) or a built engine directory."""
    if batch_size < 1:
        raise CertsegError(f"invalid batch-size={batch_size}: must be an integer >= 1")
    if engine is not None:
        from .runtime.segmenter import CertifiedSegmenter

        seg = CertifiedSegmenter.load(engine, batch_size=batch_size)
        seg._check_sigma(sigma)
        seg.backend.segmenter_fn = seg.segment
        return seg.backend, seg.classes
    from .runtime.backends.torch_eager import reference_backend

    backend = reference_backend(_model_dir(model), DEFAULTS["sigma"] if sigma is None else sigma,
                                batch_size=batch_size, denoiser=denoiser)
    return backend, backend.source.classes


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--model", default="chest", show_default=True, help="bundled model name or model directory")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="certify with this engine directory (certseg-rt build-engine) instead of the torch reference")
@smoothing_options
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="write the certified mask here (PNG: class index per pixel, 255 = abstain)")
@click.option("--json", "as_json", is_flag=True, help="print the certificate as JSON")
@_user_errors
def certify(image, model, engine, sigma, tau, alpha, n0, n, seed, batch_size, correction, out, as_json):
    """Certify one image: per-pixel labels that provably hold within an L2 radius.

    \b
    Example:
      certseg-rt certify scan.png --sigma 0.25 --n 100 --out mask.png --json
      certseg-rt certify scan.png --engine engines/chest --json
    """
    from .io import read_image, write_mask
    from .manifest import sha256_file

    check_parameters(sigma=sigma, tau=tau, alpha=alpha, n0=n0, n=n, correction=correction, seed=seed)
    if out is not None and out.suffix.lower() != ".png":
        raise CertsegError(f"--out {out} must end in .png (the mask is written as a PNG)")
    if not Path(image).is_file():
        raise CertsegError(f"image {image} does not exist (or is not a file)")
    from .resize import fit_to_model

    backend, classes = _open_backend(model, engine, sigma, batch_size)
    x = read_image(image, backend.channels, note=_note)
    fit = fit_to_model(x, backend.input_size)
    if fit.resized:
        _note(f"{Path(image).name} is {fit.input_size[0]}x{fit.input_size[1]}: certified at the model's "
              f"{fit.model_size[0]}x{fit.model_size[1]}, mask mapped back by nearest neighbour")
    cert = _certify_with_progress(backend, fit.image(x), n0=n0, n=n, tau=tau, alpha=alpha, seed=seed,
                                  correction=correction, desc=f"certify {Path(image).name}")
    labels = fit.labels_back(cert.labels)
    summary = {"image": str(image), "image_sha256": sha256_file(image), "classes": classes,
               **cert.summary(classes), **fit.describe(), "radius_at_input_resolution": fit.radius_at_input(cert.radius),
               "certseg_rt": __version__}
    if out is not None:
        write_mask(out, labels)
        summary["mask"] = str(out)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        per_class = ", ".join(f"{k} {v}" for k, v in summary["certified_pixels"].items())
        at_input = f" ({summary['radius_at_input_resolution']:.4f} at the image's resolution)" if fit.resized else ""
        click.echo(f"{image}: radius {cert.radius:.4f}{at_input}, abstained {cert.abstain_fraction:.1%}, "
                   f"certified pixels: {per_class} ({cert.record['seconds']:.2f} s, {cert.record['backend']})")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("certseg-out/demo"), show_default=True,
              help="folder for the overlay PNGs and summary.json")
@click.option("--count", type=int, default=4, show_default=True, help="number of held-out phantoms")
@click.option("--model", default="chest", show_default=True, help="bundled model name or model directory")
@smoothing_options
@_user_errors
def demo(out, count, model, sigma, tau, alpha, n0, n, seed, batch_size, correction):
    """Certify a few held-out phantoms (of the model's modality) with a bundled model and show the result.

    Prints per image the clean Dice (segmenter alone, clean image), the certified Dice
    (abstained pixels count as misses), the abstain rate and the radius; writes overlays
    (image | ground truth | certified, abstained pixels magenta) to OUT.
    """
    from .data import HELD_OUT_SEEDS
    from .io import overlay, write_json, write_png
    from .metrics import abstain_rate, mean_foreground_dice
    from .runtime.backends.torch_eager import reference_backend

    sigma = DEFAULTS["sigma"] if sigma is None else sigma
    check_parameters(sigma=sigma, tau=tau, alpha=alpha, n0=n0, n=n, correction=correction, seed=seed)
    if count < 1:
        raise CertsegError(f"invalid count={count}: must be >= 1")
    _check_writable(out)
    backend = reference_backend(_model_dir(model), sigma, batch_size=batch_size)
    src = backend.source
    segment_clean = _clean_segmenter(backend)
    rows = []
    click.echo(f"certifying {count} held-out phantoms: sigma={sigma} tau={tau} alpha={alpha} n0={n0} n={n} "
               f"({backend.name}; overlays -> {out})", err=True)
    click.echo(f"{'image':<14}{'clean Dice':>11}{'cert. Dice':>11}{'abstain':>9}{'radius':>8}{'seconds':>9}")
    for i in range(count):
        ph = src.phantom(HELD_OUT_SEEDS[i])
        clean = segment_clean(ph.image)
        cert = _certify_with_progress(backend, ph.image, n0=n0, n=n, tau=tau, alpha=alpha, seed=seed,
                                      correction=correction, desc=f"phantom {i}")
        row = {"image": f"phantom_{i:03d}", "seed": ph.seed,
               "clean_dice": mean_foreground_dice(clean, ph.mask, src.num_classes),
               "certified_dice": mean_foreground_dice(cert.labels, ph.mask, src.num_classes),
               "abstain_rate": abstain_rate(cert.labels), "radius": cert.radius, "seconds": cert.record["seconds"]}
        rows.append(row)
        click.echo(f"{row['image']:<14}{row['clean_dice']:>11.3f}{row['certified_dice']:>11.3f}"
                   f"{row['abstain_rate']:>9.1%}{row['radius']:>8.3f}{row['seconds']:>9.2f}")
        write_png(out / f"{row['image']}.png", np.concatenate(
            [overlay(ph.image, np.zeros_like(ph.mask)), overlay(ph.image, ph.mask), overlay(ph.image, cert.labels)],
            axis=1))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("clean_dice", "certified_dice", "abstain_rate")}
    click.echo(f"{'mean':<14}{mean['clean_dice']:>11.3f}{mean['certified_dice']:>11.3f}{mean['abstain_rate']:>9.1%}")
    write_json(out / "summary.json", {"rows": rows, "mean": mean, **backend.record,
                                      "parameters": {"sigma": sigma, "tau": tau, "alpha": alpha, "n0": n0, "n": n,
                                                     "seed": seed, "correction": correction}})
    click.echo(f"overlays (image | ground truth | certified; magenta = abstained) in {out}/", err=True)



def intake_options(fn):
    """Which model to export: a model directory with any part replaced (all default to the bundled model)."""
    opts = [
        click.option("--model", default="chest", show_default=True, help="bundled model name or model directory"),
        click.option("--segmenter", default=None,
                     help="your segmenter: a TorchScript file, or 'package.module:factory' with --segmenter-weights"),
        click.option("--segmenter-weights", type=click.Path(path_type=Path), default=None,
                     help="safetensors weights for a factory segmenter"),
        click.option("--segmenter-kwargs", default=None, help="JSON keyword arguments for the factory"),
        click.option("--classes", default=None, help="comma-separated class names (index order)"),
        click.option("--denoiser", default=None, help="diffusers directory (unet/ + scheduler/), or 'none'"),
        click.option("--image-size", default=None, help="input size H or HxW the engine is built for"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _load_source(model, segmenter, segmenter_weights, segmenter_kwargs, classes, denoiser, image_size):
    from .export.loaders import load_source

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
    return load_source(_model_dir(model), segmenter=segmenter, weights=segmenter_weights, kwargs=kwargs,
                       classes=classes.split(",") if classes else None, image_size=size, denoiser=denoiser)


@main.command("export")
@intake_options
@click.option("--sigma", type=float, default=DEFAULTS["sigma"], show_default=True, help="smoothing noise (sets t*)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder for the .onnx files")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True)
@click.option("--no-parity", is_flag=True, help="skip the ONNX Runtime vs torch parity check")
@click.option("--json", "as_json", is_flag=True, help="print metadata and parity as JSON")
@_user_errors
def export_cmd(model, segmenter, segmenter_weights, segmenter_kwargs, classes, denoiser, image_size, sigma, out,
               exporter, no_parity, as_json):
    """Export model.onnx (x_noisy -> labels), segmenter.onnx and denoiser.onnx, parity-checked.

    \b
    Example:
      certseg-rt export --out onnx/ --sigma 0.25
    """
    from .export.onnx_export import export_onnx

    check_parameters(sigma=sigma)
    _check_writable(out)
    source = _load_source(model, segmenter, segmenter_weights, segmenter_kwargs, classes, denoiser, image_size)
    click.echo(f"exporting to {out} ({exporter})", err=True)
    graphs = export_onnx(source, sigma, out, exporter=exporter, parity=not no_parity)
    result = {"graphs": [str(p) for p in (graphs.fused, graphs.segmenter, graphs.denoiser) if p],
              **graphs.metadata, "parity": graphs.parity}
    click.echo(json.dumps(result, indent=2) if as_json else
               f"wrote {', '.join(result['graphs'])}; parity: {json.dumps(graphs.parity)}")


@main.command("build-engine")
@intake_options
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--sigma", type=float, default=DEFAULTS["sigma"], show_default=True, help="smoothing noise (sets t*)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="engine directory to create")
@click.option("--batch-sizes", default="1,16,64", show_default=True, help="MIN,OPT,MAX of the batch dimension")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "int8", "fp16", "bf16"]), default="fp32", show_default=True,
              help="onnxruntime: fp32 or int8 (static, phantom-calibrated); tensorrt: fp32, fp16, bf16")
@click.option("--force", is_flag=True, help="keep an engine whose labels agree with torch fp32 below the floor")
@click.option("--workspace", type=int, default=1024, show_default=True, help="tensorrt: builder workspace, MiB")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="tensorrt: timing cache to start from [default: the replaced engine's]")
@click.option("--version-compatible", is_flag=True, help="tensorrt: engine runs on later TensorRT releases too")
@click.option("--hardware-compatible", is_flag=True, help="tensorrt: engine runs on any Ampere or newer GPU")
@click.option("--threads", type=int, default=None, help="intra-op threads recorded for the runtime [default: all cores]")
@click.option("--json", "as_json", is_flag=True, help="print the manifest as JSON")
@_user_errors
def build_engine_cmd(model, segmenter, segmenter_weights, segmenter_kwargs, classes, denoiser, image_size, backend,
                     sigma, out, batch_sizes, exporter, precision, force, workspace, timing_cache, version_compatible,
                     hardware_compatible, threads, as_json):
    """Build an engine directory: model file(s) + manifest.json (what is certified, hashes, tool versions).

    \b
    Example:
      certseg-rt build-engine --out engines/chest
      certseg-rt certify scan.png --engine engines/chest
      certseg-rt build-engine --backend tensorrt --precision fp16 --out engines/chest-trt
    """
    from .export.build import build_engine, require_tensorrt

    check_parameters(sigma=sigma)
    try:
        sizes = tuple(int(v) for v in batch_sizes.split(","))
        assert len(sizes) == 3
    except (ValueError, AssertionError):
        raise CertsegError(f"--batch-sizes {batch_sizes!r} must be three integers MIN,OPT,MAX")
    if backend == "tensorrt":
        require_tensorrt()  # before any heavy work: one line saying what is missing
    source = _load_source(model, segmenter, segmenter_weights, segmenter_kwargs, classes, denoiser, image_size)
    trt = {"workspace_bytes": workspace << 20, "version_compatible": version_compatible,
           "hardware_compatible": hardware_compatible}
    if timing_cache is not None:
        trt["timing_cache_path"] = timing_cache
    manifest = build_engine(source, sigma, out, backend=backend, precision=precision, batch_sizes=sizes,
                            exporter=exporter, threads=threads, force=force, tensorrt=trt,
                            log=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    else:
        parity = manifest["parity"]
        click.echo(f"built {out} ({backend}, {manifest['precision']}, sigma {sigma}); label agreement with torch "
                   f"{parity.get('label_agreement', float('nan')):.4%}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(as_json):
    """Version, available backends, the compiled extension and the bundled models."""
    import importlib.util

    backends = {"torch-eager": importlib.util.find_spec("torch") is not None}
    try:
        import onnxruntime

        available = onnxruntime.get_available_providers()
        for short, provider in (("cpu", "CPU"), ("cuda", "CUDA"), ("tensorrt", "Tensorrt")):
            backends[f"onnxruntime:{short}"] = f"{provider}ExecutionProvider" in available
    except ImportError:
        backends["onnxruntime:cpu"] = False
    backends["tensorrt"] = importlib.util.find_spec("tensorrt") is not None
    from ._ext_loader import EXTENSION_STATUS

    from .zoo import bundled_models

    data = {"version": __version__, "backends": backends, "extension": EXTENSION_STATUS, "models": bundled_models()}
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(f"certseg-rt {__version__}")
        for name, ok in backends.items():
            click.echo(f"  {name:<22} {'yes' if ok else 'no'}")
        click.echo(f"  extension: cpu {'yes' if EXTENSION_STATUS['cpu'] else 'no'}, "
                   f"cuda {'yes' if EXTENSION_STATUS['cuda'] else 'no'}")
        click.echo("bundled models (--model NAME):")
        for name, m in data["models"].items():
            click.echo(f"  {name:<18} {m['modality'] or '-':<6} {m['channels']} ch, {len(m['classes'])} classes, "
                       f"{'denoiser + segmenter' if m['denoiser'] else 'segmenter only (plain smoothing)'}")



@main.command()
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="fp32 engine directory for the first image size [default: build one]")
@click.option("--sizes", default="128,256", show_default=True, help="image sizes")
@click.option("--batch-sizes", default="8,16,32", show_default=True, help="batch sizes to try (best one reported)")
@click.option("--precisions", default="fp32,int8", show_default=True, help="ONNX Runtime precisions")
@click.option("--torch-precisions", default="fp32,bf16", show_default=True,
              help="torch eager precisions (bf16: CPU autocast via oneDNN); --quick takes fp32 only")
@click.option("--tensorrt-precisions", default="fp32,fp16,bf16", show_default=True,
              help="TensorRT engine precisions, rows only where TensorRT and a GPU are present ('none' to skip); "
                   "--quick takes fp16 only")
@click.option("--repeats", type=int, default=3, show_default=True, help="timed repeats per row (median reported)")
@click.option("--quick", is_flag=True, help="n=100 only, batch 16 only, 2 repeats (under 5 minutes here)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write bench.json and bench.md here")
@click.option("--model", default="chest", show_default=True, help="bundled model name or model directory")
@click.option("--json", "as_json", is_flag=True, help="print {machine, rows, summary} as JSON")
@_user_errors
def bench(engine, sizes, batch_sizes, precisions, torch_precisions, tensorrt_precisions, repeats, quick, out, model,
          as_json):
    """Time certify on the bundled model: the published loop, torch eager, ONNX Runtime fp32/int8, and
    TensorRT engines when a GPU is present.

    Without --quick also n=1000.  Each row runs in its own process (peak RSS is the row's).

    \b
    Example:
      certseg-rt bench --quick
      certseg-rt bench --json --out certseg-out/bench
    """
    from .bench import run, to_markdown
    from .io import atomic_path, write_json

    try:
        size_list = tuple(int(v) for v in sizes.split(","))
        batch_list = tuple(int(v) for v in batch_sizes.split(","))
    except ValueError:
        raise CertsegError("--sizes and --batch-sizes must be comma-separated integers")
    precision_list = tuple(precisions.split(","))
    torch_list = ("fp32",) if quick else tuple(torch_precisions.split(","))
    if not set(torch_list) <= {"fp32", "bf16"} or "fp32" not in torch_list:
        raise CertsegError(f"--torch-precisions {torch_precisions}: fp32 (always) and optionally bf16")
    trt_list = () if tensorrt_precisions == "none" else tuple(tensorrt_precisions.split(","))
    if not set(trt_list) <= {"fp32", "fp16", "bf16"}:
        raise CertsegError(f"--tensorrt-precisions {tensorrt_precisions}: choose from fp32, fp16, bf16 (or none)")
    if quick and trt_list:
        trt_list = ("fp16",)
    ns = (100,) if quick else (100, 1000)
    if quick:
        batch_list, repeats = (16,), min(repeats, 2)
    result = run(sizes=size_list, ns=ns, batch_sizes=batch_list, precisions=precision_list, repeats=repeats,
                 torch_precisions=torch_list, tensorrt_precisions=trt_list,
                 engine_dir=engine, model=_model_dir(model), log=lambda m: click.echo(m, err=True))
    table = to_markdown(result)
    if out is not None:
        write_json(Path(out) / "bench.json", result)
        with atomic_path(Path(out) / "bench.md") as tmp:
            tmp.write_text(table)
    click.echo(json.dumps(result, indent=2) if as_json else table)


@main.command("make-phantoms")
@click.argument("dataset_dir", type=click.Path(path_type=Path))
@click.option("--count", type=int, default=20, show_default=True, help="number of phantoms")
@click.option("--size", type=int, default=128, show_default=True, help="image side in pixels")
@click.option("--first-seed", type=int, default=None, help="seed of the first phantom [default: held-out seeds]")
@click.option("--modality", type=click.Choice(["chest", "skin", "polyp"]), default="chest", show_default=True,
              help="chest X-ray (gray, 4 classes), skin dermoscopy or polyp colonoscopy (RGB, binary)")
@_user_errors
def make_phantoms(dataset_dir, count, size, first_seed, modality):
    """Write synthetic images with masks as a dataset folder (images/*.png, masks/*.png).

    \b
    Example:
      certseg-rt make-phantoms data/phantoms --count 20
      certseg-rt evaluate data/phantoms --out results/
      certseg-rt make-phantoms data/skin --modality skin && certseg-rt evaluate data/skin --model skin --out res/
    """
    from .data import HELD_OUT_SEEDS
    from .data.modalities import get_modality
    from .io import write_png

    if count < 1 or not 16 <= size <= 4096:
        raise CertsegError("--count must be >= 1 and --size between 16 and 4096")
    if first_seed is not None and first_seed < 0:
        raise CertsegError(f"--first-seed {first_seed} must be >= 0")
    start = HELD_OUT_SEEDS[0] if first_seed is None else first_seed
    make = get_modality(modality).make_phantom
    for i in range(count):
        ph = make(start + i, size)
        name = f"{modality}_{start + i}"
        pixels = (np.moveaxis(ph.image, 0, -1) * 255).round().astype(np.uint8)
        write_png(Path(dataset_dir) / "images" / f"{name}.png", pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        write_png(Path(dataset_dir) / "masks" / f"{name}.png", ph.mask)
    click.echo(f"wrote {count} {modality} phantoms to {dataset_dir}/images and {dataset_dir}/masks")


@main.command()
@click.argument("dataset_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="results folder (resumable)")
@click.option("--model", default="chest", show_default=True, help="bundled model name or model directory")
@click.option("--engine", type=click.Path(path_type=Path), default=None, help="evaluate this engine directory")
@click.option("--sigma", "sigmas", default=None, help="comma-separated noise levels [default: 0.25, or the engine's]")
@click.option("--no-denoiser", is_flag=True, help="plain randomized smoothing: the segmenter sees the noisy image")
@click.option("--tau", type=float, default=DEFAULTS["tau"], show_default=True)
@click.option("--alpha", type=float, default=DEFAULTS["alpha"], show_default=True)
@click.option("--n0", type=int, default=DEFAULTS["n0"], show_default=True)
@click.option("--n", "n", type=int, default=DEFAULTS["n"], show_default=True)
@click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--correction", type=click.Choice(["holm", "bonferroni"]), default="holm", show_default=True)
@click.option("--config-name", default=None, help="label of this configuration in the results")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
              help="evaluate on a Ray cluster: HOST:PORT of its head, 'auto' (the default when no address is "
                   "given: the running cluster) or 'local' (start one here)")
@click.option("--ray-cpus", type=float, default=1.0, show_default=True,
              help="with --ray: CPUs (and threads) per worker; a TensorRT engine takes one GPU per worker")
@click.option("--ray-workers", type=int, default=None, help="with --ray: number of workers [default: fill the cluster]")
@_user_errors
def evaluate(dataset_dir, out, model, engine, sigmas, no_denoiser, tau, alpha, n0, n, seed, batch_size, correction,
             config_name, ray_address, ray_cpus, ray_workers):
    """Certified Dice / IoU, abstain rate and radius over a dataset folder; CSV + JSON + PNG plots.

    Abstained pixels count as false negatives of their true class and never as false positives.
    Finished images are skipped when re-run (results are written per image, atomically), with or
    without --ray: the records are the same.

    \b
    Example:
      certseg-rt make-phantoms data/phantoms --count 20
      certseg-rt evaluate data/phantoms --sigma 0.25,0.5 --out results/
      certseg-rt evaluate data/phantoms --ray HEAD:6379 --engine engines/chest --out results/
    """
    from .evaluate import list_dataset, record_path, write_tables
    from .io import overlay, read_image, write_json

    try:
        sigma_list = [float(v) for v in sigmas.split(",")] if sigmas else [None]
    except ValueError:
        raise CertsegError(f"--sigma {sigmas!r} must be comma-separated numbers")
    for sg in sigma_list:
        check_parameters(sigma=sg, tau=tau, alpha=alpha, n0=n0, n=n, correction=correction, seed=seed)
    if engine is not None and len(sigma_list) > 1:
        raise CertsegError("an engine is built for one sigma; evaluate one engine per sigma")
    if batch_size < 1:
        raise CertsegError(f"invalid batch-size={batch_size}: must be an integer >= 1")
    if ray_address is None and (ray_workers is not None or ray_cpus != 1.0):
        raise CertsegError("--ray-workers and --ray-cpus need --ray")
    if ray_address is not None and (ray_cpus <= 0 or (ray_workers is not None and ray_workers < 1)):
        raise CertsegError("--ray-cpus must be > 0 and --ray-workers >= 1")
    samples = list_dataset(dataset_dir)
    _check_writable(out)
    config = config_name or (f"engine:{Path(engine).name}" if engine else
                             ("plain" if no_denoiser else "denoised"))
    params = {"n0": n0, "n": n, "tau": tau, "alpha": alpha, "seed": seed, "correction": correction}
    records, failures, tiles = [], [], []
    # On a cluster the engine or model is checked here, before Ray starts (the workers open it).
    targets = [_ray_target(model, engine, sg, batch_size, not no_denoiser) for sg in sigma_list] \
        if ray_address is not None else None
    try:
        with _ray_or_nothing(ray_address) as ray:
            for k, sg in enumerate(sigma_list):
                if ray is None:
                    backend, classes = _open_backend(model, engine, sg, batch_size, denoiser=not no_denoiser)
                    sigma, channels = backend.sigma, backend.channels
                else:
                    target = targets[k]
                    sigma, classes, channels = target.sigma, list(target.classes), target.channels
                done, todo = {}, []
                for sample in samples:
                    rec = _finished_record(record_path(out, config, sigma, sample.name), params)
                    if rec is None:
                        todo.append(sample)
                    else:
                        done[sample.name] = rec
                want = set(range(max(0, 8 - len(tiles)))) if sg == sigma_list[0] else set()
                if ray is None:
                    outcomes = _evaluate_here(todo, backend, _clean_segmenter(backend), classes, sigma, params)
                else:
                    from .distributed import evaluate_on_ray

                    outcomes = evaluate_on_ray(ray, todo, target, params, cpus=ray_cpus, workers=ray_workers,
                                               labels_for=want)
                new, failed, shown = {}, {}, {}
                for o in _progress_of(outcomes, len(todo), f"{config} sigma={sigma:g}"):
                    sample = todo[o.index]
                    if o.reason is not None:
                        failed[o.index] = {"image": sample.name, "sigma": sigma, "reason": o.reason}
                        continue
                    rec = {**o.record, "config": config}
                    write_json(record_path(out, config, sigma, sample.name), rec)
                    new[sample.name] = rec
                    if o.labels is not None and o.index in want:
                        shown[o.index] = o.labels
                records += [done.get(s.name) or new[s.name] for s in samples if s.name in done or s.name in new]
                failures += [failed[i] for i in sorted(failed)]
                for i in sorted(shown)[:max(0, 8 - len(tiles))]:
                    rec = new[todo[i].name]
                    tiles.append((f"{todo[i].name} sigma={sigma:g} Dice {rec['certified_dice']:.2f}",
                                  overlay(read_image(todo[i].image, channels), shown[i])))
    except KeyboardInterrupt:
        raise CertsegError(f"interrupted; finished images are saved in {out}/records (re-run the same command "
                           f"to resume)")
    summary = write_tables(out, records, failures, classes)
    try:
        from .plots import dice_vs_radius, overlay_grid

        dice_vs_radius(summary, out / "dice_vs_radius.png")
        if tiles:
            overlay_grid(tiles, out / "overlays.png")
    except ImportError:
        click.echo("matplotlib is not installed: no plots (pip install 'certseg-rt[plots]')", err=True)
    for row in summary["overall"]:
        click.echo(f"{row['modality']:<8}{row['config']:<12} sigma {row['sigma']:<5g} radius {row['radius']:.3f}  clean Dice "
                   f"{row['clean_dice']:.3f}  certified Dice {row['certified_dice']:.3f}  certified IoU "
                   f"{row['certified_iou']:.3f}  abstain {row['abstain_rate']:.1%}  ({row['images']} images)")
    click.echo("abstained pixels count as false negatives of their true class, never as false positives", err=True)
    for f in failures:
        click.echo(f"failed: {f['image']} (sigma {f['sigma']:g}): {f['reason']}", err=True)
    click.echo(f"results in {out}/ (per_image.csv, summary.json, dice_vs_radius.png, overlays.png)", err=True)
    if failures:
        raise SystemExit(1)


def _check_writable(out: Path) -> None:
    """Refuse an output folder that cannot be created or written, before any work."""
    import os

    probe = Path(out)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise CertsegError(f"cannot write to {out}: {probe} is not a writable folder; choose another --out")


def _finished_record(path: Path, params: dict) -> dict | None:
    """The record of an image already evaluated with these parameters, or None (then it is redone)."""
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or unreadable: redo it (the record is rewritten atomically)
        return None
    return done if isinstance(done, dict) and done.get("parameters") == params else None


def _evaluate_here(todo, backend, clean_fn, classes, sigma, params):
    """The images evaluated in this process, one outcome each (as distributed.evaluate_on_ray yields them)."""
    from .distributed import Outcome
    from .evaluate import evaluate_sample

    for i, sample in enumerate(todo):
        try:
            rec = evaluate_sample(sample, backend, clean_fn, classes, sigma=sigma, **params)
        except (CertsegError, ValueError) as e:
            yield Outcome(i, reason=str(e).splitlines()[0] if str(e) else type(e).__name__)
            continue
        labels = rec.pop("_labels")
        yield Outcome(i, record=rec, labels=labels)


def _progress_of(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="image", file=sys.stderr, disable=None)


def _ray_or_nothing(address):
    import contextlib

    if address is None:
        return contextlib.nullcontext(None)
    from .distributed import ray_session

    return ray_session(address)


def _ray_target(model, engine, sigma, batch_size, denoiser):
    from .distributed import engine_target, model_target

    if engine is not None:
        return engine_target(engine, sigma, batch_size)
    return model_target(_model_dir(model), DEFAULTS["sigma"] if sigma is None else sigma, batch_size, denoiser)


def _clean_segmenter(backend):
    """The base segmenter alone on a clean image (labels), for the clean Dice."""
    if hasattr(backend, "source"):
        import torch

        def run(image):
            with torch.inference_mode():
                logits = backend.source.segmenter(torch.from_numpy(image[None]))
            return logits.argmax(1)[0].numpy().astype(np.uint8)
        return run
    return backend.segmenter_fn


if __name__ == "__main__":
    main()
