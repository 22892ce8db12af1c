"""certify and demo: one image, or a few held-out phantoms."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from .. import __version__
from ..certify import DEFAULTS, check_parameters
from ..errors import CertsegError
from .common import (
    REFERENCE_BATCH,
    cache_choice,
    check_batch_size,
    certify_with_progress,
    check_writable,
    model_dir,
    memory_budget,
    note,
    open_backend,
    runtime_options,
    smoothing_options,
    user_errors,
)
from .group import main


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--model", default="chest", show_default=True, help="bundled model name or model directory")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="certify with this engine directory (certseg-rt build-engine) instead of the torch reference")
@smoothing_options
@runtime_options
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="write the certified mask here (PNG: class index per pixel, 255 = abstain; a volume's mask: "
                   "NIfTI .nii/.nii.gz, or .nrrd for an NRRD volume)")
@click.option("--window", default=None, metavar="LO,HI",
              help="volumes: the intensities mapped to [0, 1] (e.g. -160,240 Hounsfield units)  [default: the "
                   "volume's min-max]")
@click.option("--json", "as_json", is_flag=True, help="print the certificate as JSON")
@user_errors
def certify(image, model, engine, sigma, tau, alpha, n0, n, seed, batch_size, correction, threads, max_memory,
            cache_dir, no_cache, out, window, as_json):
    """Certify one image, or one volume whole: per-pixel labels that provably hold within an L2 radius.

    A volume (NIfTI of several slices, NRRD, or a folder of one DICOM series) is certified slice by slice
    with the 2-D model, and Holm runs once over all its voxels: the guarantee holds jointly for the volume.

    \b
    Example:
      certseg-rt certify scan.png --sigma 0.25 --n 100 --out mask.png --json
      certseg-rt certify scan.png --engine engines/chest --json
      certseg-rt certify ct.nii.gz --window -160,240 --out ct_mask.nii.gz --json
    """
    from ..io import read_image, write_mask
    from ..manifest import sha256_file
    from ..volumes import is_volume_path
    from .volume_commands import certify_volume_file, open_volume_for_certify

    check_parameters(sigma=sigma, tau=tau, alpha=alpha, n0=n0, n=n, correction=correction, seed=seed)
    if is_volume_path(image):
        prepared = open_volume_for_certify(Path(image), out, window)  # a bad volume: one line, before the model
        backend, classes = open_backend(model, engine, sigma, batch_size, threads=threads,
                                        max_memory=memory_budget(max_memory),
                                        cache_dir=cache_choice(cache_dir, no_cache), calls=(n0, n))
        return certify_volume_file(prepared, backend, classes, n0=n0, n=n, tau=tau, alpha=alpha, seed=seed,
                                   correction=correction, out=out, as_json=as_json)
    if window is not None:
        raise CertsegError(f"--window applies to volumes; {image} is a 2-D image (give PNG/.npy in [0, 1] or let "
                           f"NIfTI/DICOM slices be min-max normalised)")
    if out is not None and out.suffix.lower() != ".png":
        raise CertsegError(f"--out {out} must end in .png (the mask is written as a PNG)")
    if not Path(image).is_file():
        raise CertsegError(f"image {image} does not exist (or is not a file)")
    from ..resize import fit_to_model

    backend, classes = open_backend(model, engine, sigma, batch_size, threads=threads,
                                    max_memory=memory_budget(max_memory), cache_dir=cache_choice(cache_dir, no_cache),
                                    calls=(n0, n))
    x = read_image(image, backend.channels, note=note)
    fit = fit_to_model(x, backend.input_size, getattr(backend, "adapter", None))
    if fit.resized:
        note(f"{Path(image).name} is {fit.input_size[0]}x{fit.input_size[1]}: certified at the model's "
              f"{fit.model_size[0]}x{fit.model_size[1]}, mask mapped back by nearest neighbour")
    cert = certify_with_progress(backend, fit.image(x), n0=n0, n=n, tau=tau, alpha=alpha, seed=seed,
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
        at_input = ""
        if fit.adapter is not None:  # the radius holds in the noise space; the image's is R / |A|_2
            at_input = (f" in the denoiser's {fit.adapter.channels}-channel noise space "
                        f"({summary['radius_at_input_resolution']:.4f} in the {fit.adapter.image_channels}-channel "
                        f"image{', at its resolution' if fit.resized else ''})")
        elif fit.resized:
            at_input = f" ({summary['radius_at_input_resolution']:.4f} at the image's resolution)"
        click.echo(f"{image}: radius {cert.radius:.4f}{at_input}, abstained {cert.abstain_fraction:.1%}, "
                   f"certified pixels: {per_class} ({cert.record['seconds']:.2f} s, {cert.record['backend']})")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("certseg-out/demo"), show_default=True,
              help="folder for the overlay PNGs and summary.json")
@click.option("--count", type=int, default=4, show_default=True, help="number of held-out phantoms")
@click.option("--model", default="chest", show_default=True, help="bundled model name or model directory")
@smoothing_options
@user_errors
def demo(out, count, model, sigma, tau, alpha, n0, n, seed, batch_size, correction):
    """Certify a few held-out phantoms (of the model's modality) with a bundled model and show the result.

    Prints per image the clean Dice (segmenter alone, clean image), the certified Dice
    (abstained pixels count as misses), the abstain rate and the radius; writes overlays
    (image | ground truth | certified, abstained pixels magenta) to OUT.
    """
    from ..data import HELD_OUT_SEEDS
    from ..data.modalities import MODALITIES
    from ..io import overlay, write_json, write_png
    from ..metrics import abstain_rate, mean_foreground_dice
    from ..runtime.backends import open_model

    sigma = DEFAULTS["sigma"] if sigma is None else sigma
    check_parameters(sigma=sigma, tau=tau, alpha=alpha, n0=n0, n=n, correction=correction, seed=seed)
    if count < 1:
        raise CertsegError(f"invalid count={count}: must be >= 1")
    check_writable(out)
    check_batch_size(batch_size)
    backend = open_model(model_dir(model), sigma, batch_size=batch_size or REFERENCE_BATCH)
    src = backend.source
    if src.modality is not None and src.modality not in MODALITIES:
        raise CertsegError(f"model {model} was trained on real {src.modality} scans, not phantoms: fetch its data "
                           f"and evaluate it, e.g. certseg-rt fetch-data liver-ct data/liver-ct && certseg-rt "
                           f"evaluate data/liver-ct/lits117 --model {model} --out results/")
    segment_clean = backend.segment
    rows = []
    click.echo(f"certifying {count} held-out phantoms: sigma={sigma} tau={tau} alpha={alpha} n0={n0} n={n} "
               f"({backend.name}; overlays -> {out})", err=True)
    click.echo(f"{'image':<14}{'clean Dice':>11}{'cert. Dice':>11}{'abstain':>9}{'radius':>8}{'seconds':>9}")
    for i in range(count):
        ph = src.phantom(HELD_OUT_SEEDS[i])
        clean = segment_clean(ph.image)
        cert = certify_with_progress(backend, ph.image, n0=n0, n=n, tau=tau, alpha=alpha, seed=seed,
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
