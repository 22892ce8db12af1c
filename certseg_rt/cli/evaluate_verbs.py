"""make-phantoms and evaluate: data sets, locally or on a Ray cluster."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ..certify import DEFAULTS, check_parameters
from ..errors import CertsegError
from .common import (
    REFERENCE_BATCH,
    cache_choice,
    check_batch_size,
    check_writable,
    memory_budget,
    model_dir,
    open_backend,
    progress_of,
    runtime_options,
    user_errors,
)
from .group import main


@main.command("make-phantoms")
@click.argument("dataset_dir", type=click.Path(path_type=Path))
@click.option("--count", type=int, default=20, show_default=True, help="number of phantoms")
@click.option("--size", type=int, default=128, show_default=True, help="image side in pixels")
@click.option("--first-seed", type=int, default=None, help="seed of the first phantom [default: held-out seeds]")
@click.option("--modality", type=click.Choice(["chest", "skin", "polyp"]), default="chest", show_default=True,
              help="chest X-ray (gray, 4 classes), skin dermoscopy or polyp colonoscopy (RGB, binary)")
@user_errors
def make_phantoms(dataset_dir, count, size, first_seed, modality):
    """Write synthetic images with masks as a dataset folder (images/*.png, masks/*.png).

    \b
    Example:
      certseg-rt make-phantoms data/phantoms --count 20
      certseg-rt evaluate data/phantoms --out results/
      certseg-rt make-phantoms data/skin --modality skin && certseg-rt evaluate data/skin --model skin --out res/
    """
    from ..data import HELD_OUT_SEEDS
    from ..data.modalities import get_modality
    from ..io import write_png

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
@click.option("--reference", default=None, metavar="RUNNER[:PRECISION[:LAYOUT|VARIANT]]",
              help="the runner of --model: torch-eager (default, CPU), or on a GPU torch-cuda-fused[:fp16[:compiled]], "
                   "torch-cuda-careful[:bf16[:channels_last]], torch-cuda-eager; GPU runners pack several images' "
                   "samples into one batch")
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
@click.option("--score-classes", default=None, metavar="NAMES",
              help="comma-separated foreground classes the headline Dice / IoU average, for data sets that label "
                   "only some of the model's classes (LiTS: liver)  [default: every foreground class]")
@click.option("--window", default=None, metavar="LO,HI",
              help="volumes: the intensities mapped to [0, 1] (e.g. -160,240 Hounsfield units)  [default: each "
                   "volume's min-max]")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
              help="evaluate on a Ray cluster: HOST:PORT of its head, 'auto' (the default when no address is "
                   "given: the running cluster) or 'local' (start one here)")
@click.option("--ray-cpus", type=float, default=1.0, show_default=True,
              help="with --ray: CPUs (and threads) per worker; a TensorRT engine takes one GPU per worker")
@click.option("--ray-workers", type=int, default=None, help="with --ray: number of workers [default: fill the cluster]")
@runtime_options
@user_errors
def evaluate(dataset_dir, out, model, engine, reference, sigmas, no_denoiser, tau, alpha, n0, n, seed, batch_size,
             correction, config_name, score_classes, window, ray_address, ray_cpus, ray_workers, threads, max_memory,
             cache_dir, no_cache):
    """Certified Dice / IoU, abstain rate and radius over a dataset folder; CSV + JSON + PNG plots.

    Abstained pixels count as false negatives of their true class and never as false positives.
    Finished images are skipped when re-run (results are written per image, atomically), with or
    without --ray: the records are the same.  Volumes (images/NAME.nii.gz, .nrrd, or a DICOM series
    folder images/NAME/, with masks/NAME.nii.gz on the same grid) are certified whole and scored per voxel.

    \b
    Example:
      certseg-rt make-phantoms data/phantoms --count 20
      certseg-rt evaluate data/phantoms --sigma 0.25,0.5 --out results/
      certseg-rt evaluate data/phantoms --ray HEAD:6379 --engine engines/chest --out results/
      certseg-rt evaluate data/phantoms --reference torch-cuda-fused:fp16 --out results/   # on a GPU
    """
    from ..evaluate import list_dataset, record_path, scored_over, write_tables
    from ..evaluate_volume import overlay_image, volume_window
    from ..io import overlay, write_json

    try:
        sigma_list = [float(v) for v in sigmas.split(",")] if sigmas else [None]
    except ValueError:
        raise CertsegError(f"--sigma {sigmas!r} must be comma-separated numbers")
    for sg in sigma_list:
        check_parameters(sigma=sg, tau=tau, alpha=alpha, n0=n0, n=n, correction=correction, seed=seed)
    if engine is not None and len(sigma_list) > 1:
        raise CertsegError("an engine is built for one sigma; evaluate one engine per sigma")
    check_batch_size(batch_size)
    if ray_address is None and (ray_workers is not None or ray_cpus != 1.0):
        raise CertsegError("--ray-workers and --ray-cpus need --ray")
    if ray_address is not None and (ray_cpus <= 0 or (ray_workers is not None and ray_workers < 1)):
        raise CertsegError("--ray-cpus must be > 0 and --ray-workers >= 1")
    if ray_address is not None and (cache_dir is not None or no_cache):
        raise CertsegError("with --ray each worker keeps compiled models in its own machine's cache folder; omit "
                           "--cache-dir and --no-cache")
    if ray_address is not None and threads is not None:
        raise CertsegError("with --ray each worker runs --ray-cpus threads; omit --threads")
    if reference is not None and (engine is not None or ray_address is not None):
        raise CertsegError("--reference runs --model here; it does not combine with --engine or --ray")
    budget = memory_budget(max_memory)
    cache = cache_choice(cache_dir, no_cache)
    samples = list_dataset(dataset_dir)
    window_range = volume_window(window, samples, ray_address)
    check_writable(out)
    config = config_name or (f"engine:{Path(engine).name}" if engine else
                             ("plain" if no_denoiser else "denoised")
                             + (f"@{reference.replace(':', '-')}" if reference else ""))
    params = {"n0": n0, "n": n, "tau": tau, "alpha": alpha, "seed": seed, "correction": correction,
              **({"window": list(window_range)} if window_range is not None else {})}
    records, failures, tiles = [], [], []
    # On a cluster the engine or model is checked here, before Ray starts (the workers open it).
    targets = [_ray_target(model, engine, sg, batch_size, not no_denoiser, budget) for sg in sigma_list] \
        if ray_address is not None else None
    try:
        with _ray_or_nothing(ray_address) as ray:
            for k, sg in enumerate(sigma_list):
                if ray is None:
                    backend, classes = open_backend(model, engine, sg, batch_size, denoiser=not no_denoiser,
                                                    threads=threads, max_memory=budget, reference=reference,
                                                    cache_dir=cache, calls=(n0, n))
                    sigma, channels = backend.sigma, backend.channels
                    model_files = getattr(backend, "record", {}).get("model_files")
                else:
                    target = targets[k]
                    sigma, classes, channels = target.sigma, list(target.classes), target.channels
                    model_files = None  # known to the workers only: the parameters decide
                scored = _scored_classes(score_classes, classes)
                done, todo = {}, []
                for sample in samples:
                    rec = _finished_record(record_path(out, config, sigma, sample.name), params, model_files)
                    if rec is None:
                        todo.append(sample)
                    else:
                        done[sample.name] = rec
                want = set(range(max(0, 8 - len(tiles)))) if sg == sigma_list[0] else set()
                if ray is None:
                    outcomes = _evaluate_here(todo, backend, backend.segment, classes, sigma, params)
                else:
                    from ..distributed import evaluate_on_ray

                    outcomes = evaluate_on_ray(ray, todo, target, params, cpus=ray_cpus, workers=ray_workers,
                                               labels_for=want)
                new, failed, shown = {}, {}, {}
                for o in progress_of(outcomes, len(todo), f"{config} sigma={sigma:g}"):
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
                    rec = scored_over(new[todo[i].name], scored)
                    tiles.append((f"{todo[i].name} sigma={sigma:g} Dice {rec['certified_dice']:.2f}",
                                  overlay(overlay_image(todo[i], rec, channels), shown[i])))
    except KeyboardInterrupt:
        raise CertsegError(f"interrupted; finished images are saved in {out}/records (re-run the same command "
                           f"to resume)")
    summary = write_tables(out, records, failures, classes, scored)
    try:
        from ..plots import dice_vs_radius, overlay_grid

        dice_vs_radius(summary, out / "dice_vs_radius.png")
        if tiles:
            overlay_grid(tiles, out / "overlays.png")
    except ImportError:
        click.echo("matplotlib is not installed: no plots (pip install 'certseg-rt[plots]')", err=True)
    for row in summary["overall"]:
        click.echo(f"{row['modality']:<8} {row['config']:<12} sigma {row['sigma']:<5g} radius {row['radius']:.3f}  clean Dice "
                   f"{row['clean_dice']:.3f}  certified Dice {row['certified_dice']:.3f}  certified IoU "
                   f"{row['certified_iou']:.3f}  abstain {row['abstain_rate']:.1%}  ({row['images']} images)")
    click.echo("abstained pixels count as false negatives of their true class, never as false positives; Dice and "
               f"IoU over {', '.join(summary['scored_classes'])}", err=True)
    for f in failures:
        click.echo(f"failed: {f['image']} (sigma {f['sigma']:g}): {f['reason']}", err=True)
    click.echo(f"results in {out}/ (per_image.csv, summary.json, dice_vs_radius.png, overlays.png)", err=True)
    if failures:
        raise SystemExit(1)


def _scored_classes(names: str | None, classes) -> list[str] | None:
    """--score-classes as class names of the model, checked before anything is certified."""
    if names is None:
        return None
    scored = [v.strip() for v in names.split(",") if v.strip()]
    unknown = [v for v in scored if v not in classes[1:]]
    if not scored or unknown:
        raise CertsegError(f"--score-classes {names!r}: {', '.join(unknown) or 'no class'} is not a foreground class "
                           f"of this model; choose from {', '.join(classes[1:])}")
    return scored


def _finished_record(path: Path, params: dict, model_files: dict | None = None) -> dict | None:
    """The record of an image already evaluated with these parameters (and, where known, the same model files:
    another --model or retrained weights under the same configuration name are another experiment), or None
    (then it is redone)."""
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or unreadable: redo it (the record is rewritten atomically)
        return None
    if not isinstance(done, dict) or done.get("parameters") != params:
        return None
    return done if model_files is None or done.get("model_files") == model_files else None


def _evaluate_here(todo, backend, clean_fn, classes, sigma, params):
    """The images evaluated in this process, one outcome each (as distributed.evaluate_on_ray yields them); GPU
    runners pack several images' samples into one batch (evaluate.evaluate_samples)."""
    from ..distributed import Outcome
    from ..evaluate import evaluate_samples

    for i, rec in evaluate_samples(todo, backend, clean_fn, classes, sigma=sigma, **params):
        if isinstance(rec, Exception):
            yield Outcome(i, reason=str(rec).splitlines()[0] if str(rec) else type(rec).__name__)
        else:
            yield Outcome(i, record=rec, labels=rec.pop("_labels"))


def _ray_or_nothing(address):
    import contextlib

    if address is None:
        return contextlib.nullcontext(None)
    from ..distributed import ray_session

    return ray_session(address)


def _ray_target(model, engine, sigma, batch_size, denoiser, max_memory=None):
    from ..distributed import engine_target, model_target

    if engine is not None:
        return engine_target(engine, sigma, batch_size, max_memory)
    return model_target(model_dir(model), DEFAULTS["sigma"] if sigma is None else sigma, batch_size or REFERENCE_BATCH,
                        denoiser, max_memory)
