"""One bench row: a configuration opened in a fresh process, warmed up, and timed certifying phantoms.

A row kind turns a row's spec into ``certify(image, seed) -> labels``; adding a kind is a function here
and an entry in ``ROW_KINDS``:

* ``reference-loop``: the published way: batch 1 torch eager, a Python loop of per-pixel
  ``scipy.stats.binomtest`` and statsmodels' Holm;
* ``reference``: a reference runner (``runtime.backends.REFERENCES``: torch eager, ...) at a precision and
  memory layout, batched;
* ``engine``: an engine directory of any registered backend (``runtime.backends.RUNNERS``), through
  ``CertifiedSegmenter``: keyed noise and votes in the compiled extension, table-lookup statistics;
* ``throughput`` (GPU reference runners): images per second certifying held-out phantoms in turn, the samples of
  several images packed into one batch where the runner packs images (``certify.certify_many``).

GPU rows add their batch plan, compile record, device peak memory and forward-pass limit (``gpu.gpu_extras``).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

DICE_PHANTOMS = 3  # fixed held-out phantoms for each row's certified Dice
SIGMA = 0.25


def gflop_per_sample(model_dir: Path, size: int) -> float:
    """Multiply-adds x 2 of denoiser + segmenter on one sample, counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..export.loaders import load_model_dir

    src = load_model_dir(model_dir)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        src.denoise_segment(SIGMA, output="logits")(torch.rand(1, src.noise_channels, size, size))
    return counter.get_total_flops() / 1e9


def _reference_loop_certify(model, x, *, n0, n, tau, alpha, seed, sigma):
    """The published implementation's shape: one sample per forward pass, a per-pixel Python loop of tests."""
    import torch
    from scipy.stats import binomtest
    from statsmodels.stats.multitest import multipletests

    from ..kernels import gaussian_noise
    from ..stats import certified_radius

    C = model.num_classes
    H, W = x.shape[1:]

    def counts_of(num, offset):
        counts = np.zeros((C, H, W), np.int64)
        for i in range(num):
            eps = gaussian_noise(seed, offset + i, 1, x.size).reshape(x.shape)
            with torch.inference_mode():
                labels = model.net(torch.from_numpy(x + np.float32(sigma) * eps)[None])[0].numpy()
            for c in range(C):
                counts[c] += labels == c
        return counts

    counts0, counts = counts_of(n0, 0), counts_of(n, n0)
    cand = counts0.argmax(0)
    pvalues = np.empty(H * W)
    for p, (i, j) in enumerate(np.ndindex(H, W)):
        pvalues[p] = binomtest(int(counts[cand[i, j], i, j]), n, tau, alternative="greater").pvalue
    reject = multipletests(pvalues, alpha=alpha, method="holm")[0].reshape(H, W)
    return np.where(reject, cand, 255).astype(np.uint8), certified_radius(sigma, tau)


def _batched(backend, spec) -> tuple[Callable, Callable]:
    from ..certify import certify

    def run(x, seed):
        return certify(backend, x, n0=spec["n0"], n=spec["n"], seed=seed).labels

    def warm(x):  # sessions, compiled partial batches, allocations; n <= 100 samples are enough for that on a CPU
        # a GPU runner plans its batches per call (graphs, cuDNN's autotuning, a compiled batch range): the row's n
        certify(backend, x, n0=spec["n0"], n=spec["n"] if spec.get("gpu") else min(spec["n"], 100), seed=0)
    return run, warm


def open_reference_loop(spec: dict):
    import torch

    from ..runtime.backends import open_model

    backend = open_model(Path(spec["model"]), SIGMA, batch_size=1, max_memory=spec.get("max_memory"))

    class Net:  # what the loop needs: the DenoiseSegment module and the class count
        net, num_classes = backend.model, backend.num_classes

    def run(x, seed):
        return _reference_loop_certify(Net, x, n0=spec["n0"], n=spec["n"], tau=0.75, alpha=0.001, seed=seed,
                                       sigma=SIGMA)[0]

    def warm(x):
        with torch.inference_mode():
            backend.model(torch.from_numpy(x[None]))
    return run, warm, backend


def _open_reference_backend(spec: dict):
    from ..runtime.backends import open_model

    return open_model(Path(spec["model"]), SIGMA, name=spec["backend"], batch_size=spec["batch_size"],
                      precision=spec["precision"], layout=spec.get("layout", "nchw"), variant=spec.get("variant"),
                      threads=spec.get("threads"), max_memory=spec.get("max_memory"))


def open_reference(spec: dict):
    backend = _open_reference_backend(spec)
    return (*_batched(backend, spec), backend)


def open_engine_row(spec: dict):
    from ..runtime.segmenter import CertifiedSegmenter

    backend = CertifiedSegmenter.load(spec["engine"], batch_size=spec["batch_size"], threads=spec.get("threads"),
                                      max_memory=spec.get("max_memory")).backend
    return (*_batched(backend, spec), backend)


ROW_KINDS: dict[str, Callable] = {"reference-loop": open_reference_loop, "reference": open_reference,
                                  "engine": open_engine_row}


def run_row(spec: dict) -> dict:
    """Time one configuration (called in a subprocess: ``python -m certseg_rt.bench SPEC``)."""
    from ..data import HELD_OUT_SEEDS
    from ..data.modalities import get_modality
    from ..metrics import mean_foreground_dice
    from .gpu import gpu_extras, reset_device_peak
    from .machine import peak_rss_mb

    if spec.get("gpu"):
        reset_device_peak()
    if spec["kind"] == "throughput":
        return run_throughput(spec)
    size, n0, n, repeats = spec["image_size"], spec["n0"], spec["n"], spec["repeats"]
    modality = get_modality(spec["modality"])
    images = [modality.make_phantom(HELD_OUT_SEEDS[700 + i], size) for i in range(DICE_PHANTOMS)]
    run, warm, backend = ROW_KINDS[spec["kind"]](spec)
    warm(images[0].image)
    # The timed calls certify the Dice phantoms in turn (seed 100 + phantom), so their labels score the row
    # too; phantoms that no timed call reached are certified untimed.
    times, labels = [], {}
    for r in range(repeats):
        i = r % len(images)
        start = time.perf_counter()
        labels[i] = run(images[i].image, 100 + i)
        times.append(time.perf_counter() - start)
    dice = []
    if spec.get("dice", True):
        for i, ph in enumerate(images):
            got = labels[i] if i in labels else run(ph.image, 100 + i)
            dice.append(mean_foreground_dice(got, ph.mask, len(modality.classes)))
    med = statistics.median(times)
    flops = spec["gflop_per_sample"] * (n0 + n)
    return {**_row_head(spec, backend), "seconds_median": round(med, 4), "seconds": [round(t, 4) for t in times],
            "samples_per_second": round((n0 + n) / med, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "certified_dice": round(float(np.mean(dice)), 4) if dice else None,
            "gflops_per_second": round(flops / med, 1), **(gpu_extras(backend, spec) if spec.get("gpu") else {})}


def _row_head(spec: dict, backend) -> dict:
    record = getattr(backend, "record", {})
    batch = record.get("batch_size") if spec.get("gpu") else None  # a GPU runner's batch is its plan's
    return {"kind": spec["kind"], "backend": spec["backend"], "precision": spec["precision"],
            "layout": spec.get("layout"), **({"variant": spec["variant"]} if spec.get("variant") else {}),
            "image_size": spec["image_size"], "n0": spec["n0"], "n": spec["n"],
            "batch_size": int(batch or getattr(backend, "batch_size", spec["batch_size"]) or 0),
            "engine": spec.get("engine"), **({"gpu": True} if spec.get("gpu") else {}),
            **{k: v for k, v in record.items() if k in ("device", "cuda_graph")}}


THROUGHPUT_SEED = 100


def run_throughput(spec: dict) -> dict:
    """Images per second: ``spec["images"]`` held-out phantoms certified in turn (n0 + n each, seed 100), packed
    where the runner packs images, after a warm-up on the same batches (captures, compiles, cuDNN's autotuning)."""
    from ..certify import certify_many
    from ..data import HELD_OUT_SEEDS
    from ..data.modalities import get_modality
    from ..metrics import mean_foreground_dice
    from .gpu import gpu_extras
    from .machine import peak_rss_mb

    size, n0, n, count = spec["image_size"], spec["n0"], spec["n"], spec["images"]
    modality = get_modality(spec["modality"])
    phantoms = [modality.make_phantom(HELD_OUT_SEEDS[800 + i], size) for i in range(count)]
    images = [ph.image for ph in phantoms]
    backend = _open_reference_backend(spec)
    kw = {"n0": n0, "n": n, "seed": THROUGHPUT_SEED}
    # warm-up on the timed run's batches (captures, compiles, cuDNN's autotuning): a runner that packs images
    # cuts them into packs by their number, so it warms up on all of them
    certify_many(backend, images if getattr(backend, "packs_images", False) else images[:1], **kw)
    start = time.perf_counter()
    certs = certify_many(backend, images, **kw)
    total = time.perf_counter() - start
    dice = [mean_foreground_dice(c.labels, ph.mask, len(modality.classes)) for c, ph in zip(certs, phantoms)]
    return {**_row_head(spec, backend), "images": count, "images_per_second": round(count / total, 2),
            "seconds_median": round(total / count, 5), "seconds": [round(total, 4)],
            "samples_per_second": round(count * (n0 + n) / total, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "certified_dice": round(float(np.mean(dice)), 4),
            "gflops_per_second": round(spec["gflop_per_sample"] * (n0 + n) * count / total, 1),
            **gpu_extras(backend, {**spec, "kind": "throughput"})}
