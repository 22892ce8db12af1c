"""SegCertify (Fischer, Baader, Vechev: "Scalable Certified Segmentation via Randomized Smoothing",
ICML 2021) over any backend that can count votes under noise.

The smoothed segmenter labels pixel p with the class the base model (denoiser + segmenter)
outputs most often at p under Gaussian noise N(0, sigma^2 I) on the whole image.

CERTIFY(x, n0, n, sigma, tau, alpha):
    counts0 <- SAMPLE(x, n0)                  selection: candidate class per pixel
    c_p     <- argmax counts0[:, p]           ties go to the lowest class index
    counts  <- SAMPLE(x, n)                   estimation, fresh draws
    k_p     <- counts[c_p, p]
    pv_p    <- P(Binom(n, tau) >= k_p)        H0_p: P(base(x + noise)_p = c_p) < tau
    reject  <- Holm (or Bonferroni) over all pixels at level alpha
    label_p <- c_p if reject_p else ABSTAIN
    radius  <- sigma * Phi^-1(tau)

Guarantee: with probability at least 1 - alpha over the sampling, *every* non-abstained pixel's
label is the smoothed segmenter's class with probability >= tau, and so (Cohen et al. 2019,
Fischer et al. 2021) stays that pixel's label for every perturbation of the input with L2 norm
below the radius.  The family of tests is the image's pixels; abstentions (label 255) are the
price of that family-wise control and are never counted as certified.

Several images (``certify_many``: evaluate, the bench's throughput rows) are the same CERTIFY per image; where a
device loop packs images, their runs of samples share its batches (runtime/sampling.py), never their samples.

PREDICT(x, n, alpha): the smoothed prediction without a radius: per pixel the top two classes
of n samples; abstain unless a two-sided binomial test rejects "both equally likely" (Holm or
Bonferroni over pixels at level alpha).  With probability >= 1 - alpha every returned label is
the smoothed segmenter's top class.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from . import stats

ABSTAIN = 255

MAX_SAMPLES = 2**31 - 1  # per-pixel vote counts are int32

DEFAULTS = {"sigma": 0.25, "tau": 0.75, "alpha": 0.001, "n0": 10, "n": 100, "correction": "holm", "seed": 0}


class Backend(Protocol):
    """Anything that can count the base model's labels under the project's keyed noise."""

    name: str
    sigma: float  # the noise the backend's model was built for (t* depends on it)
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)

    def sample_counts(self, x: np.ndarray, num: int, seed: int, offset: int) -> np.ndarray:
        """int32 (num_classes, H, W): votes of samples offset .. offset + num - 1 of noise stream `seed`."""


@dataclass
class Certificate:
    labels: np.ndarray  # uint8 (H, W): certified class, or ABSTAIN
    pvalues: np.ndarray  # float64 (H, W): p-value of each pixel's candidate class
    radius: float  # certified L2 radius (in the model's [0, 1] input space, at its resolution)
    sigma: float
    tau: float
    alpha: float
    n0: int
    n: int
    correction: str
    seed: int | None = None
    record: dict = field(default_factory=dict)  # what was certified: backend, model hashes, timing

    @property
    def abstain_fraction(self) -> float:
        return float(np.mean(self.labels == ABSTAIN))

    def certified_pixels(self, class_names) -> dict[str, int]:
        counts = np.bincount(self.labels.ravel(), minlength=256)
        return {name: int(counts[i]) for i, name in enumerate(class_names)}

    def summary(self, class_names) -> dict:
        """The certificate as JSON-ready data (no per-pixel arrays)."""
        return {
            "radius": self.radius,
            "abstain_fraction": self.abstain_fraction,
            "sigma": self.sigma, "tau": self.tau, "alpha": self.alpha,
            "n0": self.n0, "n": self.n, "seed": self.seed, "correction": self.correction,
            "height": int(self.labels.shape[0]), "width": int(self.labels.shape[1]),
            "certified_pixels": self.certified_pixels(class_names),
            "abstain_label": ABSTAIN,
            **self.record,
        }


def check_parameters(*, sigma=None, tau=None, alpha=None, n0=None, n=None, correction=None, seed=None) -> None:
    """Raise ValueError naming the first invalid parameter and its valid range."""
    def bad(name, value, rule):
        raise ValueError(f"invalid {name}={value!r}: {rule}")

    if sigma is not None and not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        bad("sigma", sigma, "must be a finite number > 0")
    if tau is not None and not (0.5 < tau < 1):
        bad("tau", tau, "must lie strictly between 0.5 and 1")
    if alpha is not None and not (0 < alpha < 1):
        bad("alpha", alpha, "must lie strictly between 0 and 1")
    for name, value in (("n0", n0), ("n", n)):
        if value is not None and not (isinstance(value, (int, np.integer)) and 1 <= value <= MAX_SAMPLES):
            bad(name, value, f"must be an integer in [1, {MAX_SAMPLES}] (votes are counted in int32)")
    if correction is not None and correction not in stats.CORRECTIONS:
        bad("correction", correction, f"must be one of {', '.join(stats.CORRECTIONS)}")
    if seed is not None and not (isinstance(seed, (int, np.integer)) and 0 <= seed < 2**64):
        bad("seed", seed, "must be an integer in [0, 2**64)")


def _candidates(counts0: np.ndarray) -> np.ndarray:
    """argmax over classes with ties to the lowest class index.

    A pass per class with a strict comparison (a later class must beat the best so far): the same
    answer as np.argmax(counts0, axis=0), several times faster for the few classes of segmentation.
    """
    best = counts0[0].copy()
    candidate = np.zeros(best.shape, np.intp)
    for c in range(1, counts0.shape[0]):
        better = counts0[c] > best
        candidate[better] = c
        np.maximum(best, counts0[c], out=best)
    return candidate


def _count_of(counts: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """counts[candidate[p], p] for every pixel p."""
    k = counts[0].copy()
    for c in range(1, counts.shape[0]):
        np.copyto(k, counts[c], where=candidate == c)
    return k


def _check_counts(name: str, counts: np.ndarray, total: int | None) -> int:
    if counts.ndim != 3 or counts.dtype.kind not in "iu":  # (numpy counts timedelta64 as an integer type)
        raise ValueError(f"{name} must be an integer array (C, H, W), got {counts.dtype} {counts.shape}")
    if counts.shape[0] > ABSTAIN:
        raise ValueError(f"{name} has {counts.shape[0]} classes; at most {ABSTAIN} (label {ABSTAIN} means abstain)")
    if (counts < 0).any():
        raise ValueError(f"{name} has negative counts")
    if counts.size and counts.max() > MAX_SAMPLES:
        raise ValueError(f"{name} has counts above {MAX_SAMPLES} (votes are counted in int32)")
    per_pixel = counts.sum(axis=0, dtype=np.int64)  # cannot overflow: at most 255 classes of < 2**31
    if per_pixel.size and (per_pixel != per_pixel.flat[0]).any():
        raise ValueError(f"{name} must count the same number of samples at every pixel")
    got = int(per_pixel.flat[0]) if per_pixel.size else 0
    if total is not None and got != total:
        raise ValueError(f"{name} counts {got} samples per pixel but n={total}")
    return got


def certify_from_counts(counts0: np.ndarray, counts: np.ndarray, *, n: int, sigma: float, tau: float,
                        alpha: float, correction: str = "holm") -> Certificate:
    """The statistical half of CERTIFY: selection counts and estimation counts -> certificate."""
    check_parameters(sigma=sigma, tau=tau, alpha=alpha, n=n, correction=correction)
    counts0, counts = np.asarray(counts0), np.asarray(counts)
    if counts0.shape != counts.shape:
        raise ValueError(f"counts0 {counts0.shape} and counts {counts.shape} must have the same shape")
    n0 = _check_counts("counts0", counts0, None)
    _check_counts("counts", counts, n)
    candidate = _candidates(counts0)
    k = _count_of(counts, candidate)
    pvalues, reject = stats.reject_counts(k, n, tau, alpha, correction)
    labels = np.where(reject, candidate, ABSTAIN).astype(np.uint8)
    return Certificate(labels=labels, pvalues=pvalues, radius=stats.certified_radius(sigma, tau), sigma=sigma,
                       tau=tau, alpha=alpha, n0=n0, n=n, correction=correction)


def certify(backend: Backend, x: np.ndarray, *, n0: int = 10, n: int = 100, tau: float = 0.75,
            alpha: float = 0.001, seed: int = 0, correction: str = "holm") -> Certificate:
    """CERTIFY: the selection and estimation samples are disjoint draws (sample indices 0..n0-1 and n0..n0+n-1)."""
    check_parameters(tau=tau, alpha=alpha, n0=n0, n=n, correction=correction, seed=seed)
    start = time.perf_counter()
    counts0 = backend.sample_counts(x, n0, seed, offset=0)
    counts = backend.sample_counts(x, n, seed, offset=n0)
    return _certificate(backend, counts0, counts, n=n, tau=tau, alpha=alpha, correction=correction, seed=seed,
                        seconds=time.perf_counter() - start)


def _certificate(backend, counts0, counts, *, n, tau, alpha, correction, seed, seconds) -> Certificate:
    cert = certify_from_counts(counts0, counts, n=n, sigma=backend.sigma, tau=tau, alpha=alpha,
                               correction=correction)
    cert.seed = seed
    cert.record.update(getattr(backend, "record", {"backend": backend.name}))
    cert.record["seconds"] = round(seconds, 4)
    return cert


def certify_many(backend: Backend, images: list[np.ndarray], *, n0: int = 10, n: int = 100, tau: float = 0.75,
                 alpha: float = 0.001, seed: int = 0, correction: str = "holm", pad_to: int = 0) -> list[Certificate]:
    """CERTIFY for each image, with the same seed for each (as evaluate does): each certificate is the one `certify`
    gives that image alone.  Where the backend packs images (``packs_images``: torch-cuda fused and careful), their
    runs go to ``runtime.sampling.count_runs`` together, the selection runs (samples 0 .. n0 - 1 of each image),
    then the estimation runs (n0 .. n0 + n - 1), so the device loop puts several images' samples in each batch;
    `pad_to`: that many images at least, the last one copied (so every call of a data set runs at one batch size),
    and each certificate's ``seconds`` is its share.  Elsewhere each image is certified as `certify` does (the host
    loop would share batches between images, and a certificate would depend on its neighbours)."""
    kw = {"n0": n0, "n": n, "tau": tau, "alpha": alpha, "seed": seed, "correction": correction}
    if not getattr(backend, "packs_images", False) or not images:
        return [certify(backend, x, **kw) for x in images]
    check_parameters(**kw)
    from .runtime.sampling import Run, count_runs

    start = time.perf_counter()
    xs = [*images, *[images[-1]] * (pad_to - len(images))]
    runs = [Run(x, first, num, tag=i) for first, num in ((0, n0), (n0, n)) for i, x in enumerate(xs)]
    counts = {(run.first, run.tag): run.counts for run in count_runs(backend, runs, seed)}
    certs = [_certificate(backend, counts[0, i], counts[n0, i], n=n, tau=tau, alpha=alpha, correction=correction,
                          seed=seed, seconds=0.0) for i in range(len(images))]
    share = round((time.perf_counter() - start) / len(images), 4)
    for cert in certs:
        cert.record["seconds"] = share
    return certs


@dataclass
class Prediction:
    labels: np.ndarray  # uint8 (H, W): smoothed class, or ABSTAIN
    pvalues: np.ndarray  # float64 (H, W): two-sided p-value of "top two classes equally likely"
    n: int
    alpha: float
    correction: str
    seed: int | None = None

    @property
    def abstain_fraction(self) -> float:
        return float(np.mean(self.labels == ABSTAIN))


def predict_from_counts(counts: np.ndarray, *, alpha: float, correction: str = "holm") -> Prediction:
    """PREDICT from counts: top class per pixel, kept where it beats the runner-up significantly."""
    check_parameters(alpha=alpha, correction=correction)
    counts = np.asarray(counts)
    n = _check_counts("counts", counts, None)
    top_two = np.sort(counts, axis=0)[-2:] if counts.shape[0] > 1 else np.concatenate([np.zeros_like(counts), counts])
    k_b, k_a = top_two[0], top_two[1]
    pvalues = stats.two_sided_pvalues_half(k_a, k_b)
    reject = stats.holm_reject(pvalues, alpha) if correction == "holm" else stats.bonferroni_reject(pvalues, alpha)
    labels = np.where(reject, _candidates(counts), ABSTAIN).astype(np.uint8)
    return Prediction(labels=labels, pvalues=pvalues, n=n, alpha=alpha, correction=correction)


def predict(backend: Backend, x: np.ndarray, *, n: int = 100, alpha: float = 0.001, seed: int = 0,
            correction: str = "holm") -> Prediction:
    check_parameters(alpha=alpha, n=n, correction=correction, seed=seed)
    pred = predict_from_counts(backend.sample_counts(x, n, seed, offset=0), alpha=alpha, correction=correction)
    pred.seed = seed
    return pred
