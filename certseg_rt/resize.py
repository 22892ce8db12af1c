"""Images of another size than the model's input: resize in, certified mask back out.

An image whose size differs from the model's input is resized to it (bilinear, antialiased when
shrinking), certified there, and the certified mask is mapped back to the image's own size by
nearest neighbour, so every output pixel carries the label (or abstention) of one certified pixel.

The certified radius R is a statement about the model's input: no perturbation of the *resized*
image with L2 norm below R changes a certified label.  The resize is a linear map A, so a
perturbation d of the original image arrives as A d, with |A d| <= |A|_2 |d|.  Hence the labels also
hold for every perturbation of the original image with |d| < R / |A|_2: ``Fit.radius_at_input``.
Shrinking averages pixels (|A|_2 < 1: the radius in the original image is larger); enlarging a small
image spreads each pixel over several (|A|_2 > 1: smaller).  A is separable, A = A_rows (x) A_cols,
so |A|_2 = |A_rows|_2 |A_cols|_2, each the largest singular value of a small matrix.

A grayscale image given to an RGB denoiser is also replicated into its channels (``certseg_rt.adapters``,
applied by the backend just before the noise); the whole map is then 1_3 (x) A and its norm
sqrt(3) |A|_2: ``Fit.adapter`` brings that factor into ``operator_norm`` and the radius.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .adapters import Replicate


def _resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 (H, W) -> (h, w) with Pillow's bilinear filter (float mode: no rounding, linear)."""
    from PIL import Image

    h, w = size
    return np.asarray(Image.fromarray(np.ascontiguousarray(plane, np.float32))
                      .resize((w, h), Image.Resampling.BILINEAR), np.float32)


@lru_cache(maxsize=64)
def _axis_norm(n_in: int, n_out: int) -> float:
    """Spectral norm of the 1-D resize n_in -> n_out that `_resize_plane` applies along one axis."""
    if n_in == n_out:
        return 1.0
    # Row i of the identity, resized along its length, is A e_i: the result is A transposed.
    a_t = _resize_plane(np.eye(n_in, dtype=np.float32), (n_in, n_out))
    return float(np.linalg.norm(a_t.astype(np.float64), 2))


@dataclass(frozen=True)
class Fit:
    """How an image of size `input_size` is brought to the model's `model_size` and its mask back."""

    input_size: tuple[int, int]
    model_size: tuple[int, int]
    adapter: Replicate | None = None  # the channel replication the backend applies after the resize

    @property
    def resized(self) -> bool:
        return self.input_size != self.model_size

    @property
    def resize_operator_norm(self) -> float:
        """|S|_2 of the resize input -> model resolution."""
        (hi, wi), (hm, wm) = self.input_size, self.model_size
        return _axis_norm(hi, hm) * _axis_norm(wi, wm)

    @property
    def operator_norm(self) -> float:
        """|A|_2 of the whole map from the image to the noise space: the resize's times the replication's
        (a Kronecker product's singular values are the products of its factors')."""
        return self.resize_operator_norm * (self.adapter.operator_norm if self.adapter is not None else 1.0)

    def image(self, x: np.ndarray) -> np.ndarray:
        """(C, H, W) at the input size -> (C, h, w) at the model's.  Values stay in [0, 1] (convex weights)."""
        if not self.resized:
            return x
        out = np.stack([_resize_plane(c, self.model_size) for c in x])
        return np.clip(out, 0.0, 1.0)  # only float rounding can step outside

    def labels_back(self, labels: np.ndarray) -> np.ndarray:
        """uint8 (h, w) at the model's size -> (H, W) at the input size, nearest neighbour (255 stays 255)."""
        if not self.resized:
            return labels
        from PIL import Image

        h, w = self.input_size
        return np.asarray(Image.fromarray(np.ascontiguousarray(labels, np.uint8)).resize(
            (w, h), Image.Resampling.NEAREST), np.uint8)

    def radius_at_input(self, radius: float) -> float:
        """The L2 radius the labels hold for in the original image: R / |A|_2."""
        return radius / self.operator_norm if self.resized or self.adapter is not None else radius

    def describe(self) -> dict:
        return {"input_size": list(self.input_size), "model_input_size": list(self.model_size),
                "resized": self.resized, "resize": "bilinear in, nearest-neighbour labels out" if self.resized
                else None, "resize_operator_norm": self.resize_operator_norm,
                "adapter": None if self.adapter is None else self.adapter.describe(),
                "operator_norm": self.operator_norm}


def fit_to_model(image: np.ndarray, model_size: tuple[int, int] | None, adapter: Replicate | None = None) -> Fit:
    """The Fit of a (C, H, W) image to the model; a model of any size (None) takes the image as it is.
    `adapter`: the backend's channel replication (``backend.adapter``), whose norm the radius includes."""
    size = (int(image.shape[-2]), int(image.shape[-1]))
    return Fit(size, size if model_size is None else (int(model_size[0]), int(model_size[1])), adapter)
