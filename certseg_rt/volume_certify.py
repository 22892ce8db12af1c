"""Volumes certified whole: every slice through the 2-D model, one family of hypotheses for every voxel.

VOLUME-CERTIFY(x_0 .. x_{D-1}, n0, n, sigma, tau, alpha):
    for each slice d, first sample b_d = d * (n0 + n):     batches may hold samples of several slices
        counts0[d] <- SAMPLE(x_d, n0)  samples b_d .. b_d + n0 - 1 of noise stream `seed`
        counts[d]  <- SAMPLE(x_d, n)   samples b_d + n0 .. b_d + n0 + n - 1
    CERTIFY's statistics once over all D x H x W voxels: certify_from_counts on the counts stacked as
    (C, D*H, W), i.e. Holm (or Bonferroni) at level alpha over the whole volume.

Noise keying: sample s of slice d is sample b_d + s of the Philox stream `seed` (kernels.py), so every noisy
sample of a volume is a distinct draw, and slice d's counts equal ``backend.sample_counts(x_d, n0, seed, b_d)``
and ``backend.sample_counts(x_d, n, seed, b_d + n0)`` however the samples are batched.

Guarantee: with probability at least 1 - alpha over the sampling, *every* certified voxel of the volume
(jointly, not slice by slice) carries the smoothed segmenter's class, whose probability is >= tau.  A voxel of
slice d depends on slice d only, so no perturbation of the volume whose restriction to each slice has L2 norm
below R = sigma * Phi^-1(tau) (in the model's input space; R / |A|_2 in the slice's own pixels, A its resize)
changes a certified voxel -- in particular no perturbation of the whole volume with L2 norm below R.  Abstained
voxels (255) are the price of controlling the family of all D x H x W voxels; per-slice Holm would control
each slice's family only, and certify more.

Memory: the stacked counts in the smallest integer type that holds n0 (selection) and n (estimation), e.g.
uint8 each at the defaults; the slices stream through the sampling loop, the noisy samples of one batch at a time.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np

from .certify import Certificate, certify_from_counts, check_parameters
from .runtime.sampling import Run, count_runs

SELECTION, ESTIMATION = 0, 1


def first_sample(d: int, n0: int, n: int) -> int:
    """The Philox sample index of slice d's first selection sample."""
    return d * (n0 + n)


def volume_runs(slices: Iterable[np.ndarray], n0: int, n: int) -> Iterable[Run]:
    """Each slice's selection run and estimation run, keyed as the module docstring says."""
    for d, x in enumerate(slices):
        b = first_sample(d, n0, n)
        yield Run(x, b, n0, tag=(d, SELECTION))
        yield Run(x, b + n0, n, tag=(d, ESTIMATION))


def stacked_counts(backend, slices: Iterable[np.ndarray], depth: int, *, n0: int, n: int, seed: int,
                   on_slice: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(counts0, counts), each (C, depth, H, W) in the smallest unsigned type holding n0 (resp. n)."""
    counts0 = counts = None
    seen = 0
    for run in count_runs(backend, volume_runs(slices, n0, n), seed):
        d, phase = run.tag
        if d >= depth:
            raise ValueError(f"more than the {depth} slices announced")
        if counts is None:
            shape = (run.counts.shape[0], depth, *run.counts.shape[1:])
            counts0 = np.zeros(shape, np.min_scalar_type(n0))
            counts = np.zeros(shape, np.min_scalar_type(n))
        (counts0 if phase == SELECTION else counts)[:, d] = run.counts
        if phase == ESTIMATION:
            seen += 1
            if on_slice is not None:
                on_slice(d)
    if seen != depth:
        raise ValueError(f"{seen} slices certified, {depth} announced")
    return counts0, counts


def certify_volume(backend, slices: Iterable[np.ndarray], depth: int, *, n0: int = 10, n: int = 100,
                   tau: float = 0.75, alpha: float = 0.001, seed: int = 0, correction: str = "holm",
                   on_slice: Callable[[int], None] | None = None) -> Certificate:
    """VOLUME-CERTIFY.  `slices`: the D images (C, H, W) as the backend takes them (at the model's size), read
    lazily.  Returns the joint certificate with labels and p-values of shape (D, H, W)."""
    check_parameters(tau=tau, alpha=alpha, n0=n0, n=n, correction=correction, seed=seed)
    if depth < 1:
        raise ValueError(f"a volume has at least one slice, got depth={depth}")
    start = time.perf_counter()
    counts0, counts = stacked_counts(backend, slices, depth, n0=n0, n=n, seed=seed, on_slice=on_slice)
    c, _, h, w = counts.shape
    cert = certify_from_counts(counts0.reshape(c, depth * h, w), counts.reshape(c, depth * h, w), n=n,
                               sigma=backend.sigma, tau=tau, alpha=alpha, correction=correction)
    cert.labels = cert.labels.reshape(depth, h, w)
    cert.pvalues = cert.pvalues.reshape(depth, h, w)
    cert.seed = seed
    cert.record.update(getattr(backend, "record", {"backend": getattr(backend, "name", "?")}))
    cert.record["seconds"] = round(time.perf_counter() - start, 4)
    return cert


def volume_statement(radius: float, radius_at_input: float, alpha: float, tau: float, voxels: int,
                     correction: str) -> str:
    """The volume-level guarantee in words, for the certificate's JSON."""
    return (f"With probability at least {1 - alpha:g} over the sampling, every certified voxel of the volume "
            f"(jointly: {correction.capitalize()} over all {voxels} voxels at alpha {alpha:g}) is the smoothed "
            f"segmenter's class with probability >= {tau:g}, and so keeps its label under every perturbation of the "
            f"volume whose restriction to each slice has L2 norm below {radius:.6g} in the model's [0, 1] input at "
            f"its resolution ({radius_at_input:.6g} in the slice's own pixels after intensity windowing) -- in "
            f"particular every perturbation of the whole volume with L2 norm below that.  Abstained voxels (255) "
            f"carry no claim.")
