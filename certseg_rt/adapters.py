"""Input adapters: linear maps A from the image a user gives to the space the smoothing noise is added in.

The certificate's radius R holds where the noise is added (the noise space).  A perturbation d of the
user's image arrives there as A d, and |A d| <= |A|_2 |d|, so the labels hold for every perturbation of
the image with |d| < R / |A|_2.  Two adapters exist, and a certificate may use both:

* resize (``certseg_rt.resize``): an image of another size is brought to the model's, per channel,
  S = S_rows (x) S_cols;
* replication (``Replicate``, here): a grayscale segmenter behind an RGB denoiser (as the seed paper put
  an ImageNet DDPM in front of X-ray segmenters).  The gray image x (1, H, W) becomes (x, x, x): A = 1_3 (x) I,
  and A^T A = 3 I, so every singular value is sqrt(3) and |A|_2 = sqrt(3) exactly.  The noise is added
  after A, i.i.d. in all three channels, which is what the DDPM was trained on (noise added to the gray
  image and then replicated would be identical in the three channels, a noise the DDPM has never seen).
  After denoising, the segmenter gets the mean of the three channels: A's pseudo-inverse (A^T A)^-1 A^T.

Both together: replication copies channels and a resize acts on each channel alike, so they commute and
the map is 1_3 (x) S.  The singular values of a Kronecker product are the products of the factors', hence
|1_3 (x) S|_2 = sqrt(3) |S|_2: the norms multiply (``resize.Fit.operator_norm``).

Engines record the replication in the manifest field ``adapter``:
``{"kind": "replicate", "image_channels": 1, "channels": 3, "operator_norm": 1.7320508075688772}``, with
``input.channels`` the noise space's 3.  Images are read with ``image_channels``; the runtime replicates
them before the noise (``ReplicatedInput``).  No torch here: the runtime uses this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import REBUILD, CertsegError, InputError

ADAPTER_KINDS = ("replicate",)


@dataclass(frozen=True)
class Replicate:
    """A 1-channel image copied into `channels` channels (gray -> RGB)."""

    image_channels: int = 1
    channels: int = 3

    def __post_init__(self):
        if self.image_channels != 1 or self.channels < 2:
            raise ValueError(f"replication takes a 1-channel image to 2 or more channels, got "
                             f"{self.image_channels} -> {self.channels}")

    @property
    def operator_norm(self) -> float:
        """|A|_2 = sqrt(channels): A^T A = channels * I."""
        return math.sqrt(self.channels / self.image_channels)

    def image(self, x: np.ndarray) -> np.ndarray:
        """(1, H, W) or (H, W) -> (channels, H, W); any other shape is an InputError naming both."""
        x = np.asarray(x)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[0] != self.image_channels:
            raise InputError(f"image has shape {x.shape}; the model takes ({self.image_channels}, H, W) "
                             f"(replicated into its denoiser's {self.channels} channels)")
        return np.repeat(x, self.channels, axis=0)

    def describe(self) -> dict:
        """The manifest field ``adapter`` (and the certificate's)."""
        return {"kind": "replicate", "image_channels": self.image_channels, "channels": self.channels,
                "operator_norm": self.operator_norm}


def adapter_for(image_channels: int, denoiser_channels: int | None, segmenter_channels: int | None,
                denoiser_name: str = "the denoiser") -> Replicate | None:
    """The adapter between the images, the denoiser (None: no denoiser) and the segmenter (None: not known
    before running it), or one line naming all three counts and what to do."""
    seg = image_channels if segmenter_channels is None else segmenter_channels
    den = seg if denoiser_channels is None else denoiser_channels
    if image_channels == seg == den:
        return None
    if image_channels == seg == 1 and den == 3:
        return Replicate(1, 3)
    counts = (f"the images have {image_channels} channel(s), {denoiser_name} takes "
              f"{'none (no denoiser)' if denoiser_channels is None else den}, the segmenter takes {seg}")
    if image_channels != seg:
        fix = (f"the images must have the segmenter's channels: give --model a model directory whose "
               f"segmenter.json declares input.channels {seg}{_bundled_with(seg)}")
    else:
        fix = (f"give a denoiser with {seg} channel(s) (or a 3-channel RGB denoiser in front of a 1-channel "
               f"segmenter: the gray image is replicated), or --denoiser none for plain smoothing")
    raise CertsegError(f"channel counts do not fit: {counts}; {fix}")


def _bundled_with(channels: int) -> str:
    from .zoo import bundled_models

    names = [name for name, m in bundled_models().items() if m["channels"] == channels and m["denoiser"]]
    return f" (bundled: {', '.join(names)})" if names else ""


def adapter_from_manifest(manifest: dict) -> Replicate | None:
    """The manifest's ``adapter`` field (absent or null: none), checked against ``input.channels``."""
    field = manifest.get("adapter")
    if field is None:
        return None
    def bad(rule):
        raise CertsegError(f"engine field adapter {rule}; {REBUILD}")

    if not isinstance(field, dict) or field.get("kind") not in ADAPTER_KINDS:
        bad(f"must be null or an object with kind {' or '.join(ADAPTER_KINDS)}")
    ints = [field.get(k) for k in ("image_channels", "channels")]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or ints[0] != 1 or ints[1] < 2:
        bad("must replicate image_channels 1 into channels >= 2")
    adapter = Replicate(*ints)
    inp = manifest.get("input")
    if isinstance(inp, dict) and inp.get("channels") != adapter.channels:
        bad(f"replicates into {adapter.channels} channels but field input.channels is {inp.get('channels')}")
    norm = field.get("operator_norm")
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not math.isclose(
            norm, adapter.operator_norm, rel_tol=1e-12):
        bad(f"operator_norm is {norm!r}; replication into {adapter.channels} channels has "
            f"{adapter.operator_norm!r}")
    return adapter


def image_channels(manifest: dict) -> int:
    """The channels of the images an engine takes: the adapter's image channels, else ``input.channels``."""
    adapter = adapter_from_manifest(manifest)
    return adapter.image_channels if adapter is not None else int(manifest["input"]["channels"])


class ReplicatedInput:
    """A backend seen from the image's side of a replication: images of `adapter.image_channels` go in,
    are replicated, and the backend adds its noise in the replicated space.  Everything else (sigma,
    classes, input_size, the clean segmenter, which takes the image as given) is the backend's."""

    def __init__(self, backend, adapter: Replicate):
        self.backend = backend
        self.adapter = adapter
        self.channels = adapter.image_channels
        self._record: dict = {}  # what a caller set on top of the backend's record

    @property
    def record(self) -> dict:  # read live: the torch reference updates its batch per image size
        return {**getattr(self.backend, "record", {}), **self._record, "adapter": self.adapter.describe()}

    @record.setter
    def record(self, value: dict):
        self._record = dict(value)

    def sample_counts(self, x: np.ndarray, num: int, seed: int, offset: int) -> np.ndarray:
        return self.backend.sample_counts(self.adapter.image(x), num, seed, offset)

    def count_runs(self, runs, seed: int):
        """The runs' votes (runtime.sampling.count_runs: packed where the backend packs), each image replicated
        first; yields the backend's runs (copies with the same tags)."""
        from dataclasses import replace

        from .runtime.sampling import count_runs

        return count_runs(self.backend, (replace(r, x=self.adapter.image(r.x)) for r in runs), seed)

    @property
    def progress(self):
        return self.backend.progress

    @progress.setter
    def progress(self, callback):  # the sampling loop that reports progress is the backend's
        self.backend.progress = callback

    def __getattr__(self, name):  # called only for what this class does not define
        backend = self.__dict__.get("backend")
        if backend is None:
            raise AttributeError(name)
        return getattr(backend, name)


def with_adapter(backend, adapter: Replicate | None):
    """`backend` as the image's side sees it: wrapped when there is an adapter, itself otherwise."""
    return backend if adapter is None else ReplicatedInput(backend, adapter)
