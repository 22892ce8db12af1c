"""The sampling loop for backends that run a graph x_noisy -> labels: noise -> infer -> votes.

Noise is generated outside the graph (``certseg_rt.kernels``), keyed by (seed, sample index), so
batching never changes which noise a sample sees and every backend sees the same noise.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import kernels
from .._ext_loader import ext
from ..errors import CertsegError, InputError
from ..limits import check_image_size

# The compiled kernels (cpp_ext/) when this install has them; the numpy reference otherwise.  Both
# produce the same numbers (tests/test_ext_kernels.py), so which one ran never changes a certificate.
_kernels = ext if ext is not None else kernels
if ext is not None:
    # One thread: noise and votes are ~1-2% of a batch, and between two inference calls a second OpenMP
    # thread only spins against the inference engine's own (still spinning) thread pool.
    ext.set_num_threads(1)


def check_input(x: np.ndarray, channels: int, size_multiple: int = 1) -> np.ndarray:
    """The image as the model takes it: float32 (C, H, W), finite; otherwise an InputError saying why."""
    x = np.asarray(x)
    if x.ndim == 2 and channels == 1:
        x = x[None]
    if x.ndim != 3 or x.shape[0] != channels:
        raise InputError(f"image has shape {x.shape}; the model takes ({channels}, H, W)")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise InputError(f"image is empty (shape {x.shape})")
    check_image_size(x.shape[1], x.shape[2])  # before a batch of noisy copies is allocated
    if x.shape[1] % size_multiple or x.shape[2] % size_multiple:
        raise InputError(f"image is {x.shape[1]}x{x.shape[2]}; the model needs height and width that are "
                         f"multiples of {size_multiple} (resize or pad the image)")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"image dtype is {x.dtype}; give float values in [0, 1] (io.read_image converts files)")
    if not np.isfinite(x).all():
        raise InputError("image contains NaN or Inf values; clean or re-export the image")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:  # as io.read_image refuses for files: the model and the noise are defined on [0, 1]
        raise InputError(f"image values lie in [{lo:.3g}, {hi:.3g}]; the model takes [0, 1]: rescale the image")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_engine_size(x, height: int, width: int, build_options: str = "") -> None:
    """An engine is built for one image size: refuse another in one line (before any noise is drawn)."""
    x = np.asarray(x)
    if x.ndim >= 2 and x.shape[-2:] != (height, width):
        raise CertsegError(f"image is {x.shape[-2]}x{x.shape[-1]} but the engine was built for {height}x{width}; "
                           f"resize the image or rebuild with `certseg-rt build-engine {build_options}"
                           f"--image-size {x.shape[-2]}`")


class GraphBackend:
    """Base for backends that only run a graph: subclasses implement ``infer`` (and set the attributes).

    ``static_batch``: reduced-precision kernels (OpenVINO bf16 and int8, torch bf16 here) can give a sample
    other labels at another batch size (they pick other kernels for small batches; measured: ~1e-4 of the
    pixels at batch 1 against batch 16), so a loop that ran a call's last, partial batch at its own size
    would mix two base models in one count.  A backend that sets it runs every sample of a call at one batch
    size, ``call_batch(num)`` = ceil(num / ceil(num / batch_size)) (10 for n0 = 10, 15 for n = 100 at batch
    16), the last batch padded with stale samples whose labels are discarded: at most one sample per batch is
    wasted, and a sample's labels depend only on its noise and that size.
    """

    name = "graph"
    fixed_batch = False  # the engine takes exactly batch_size samples per call (a fixed batch in its graph)
    static_batch = False

    def __init__(self, *, sigma: float, num_classes: int, channels: int, size_multiple: int, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sigma = float(sigma)
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.size_multiple = int(size_multiple)
        self.batch_size = int(batch_size)
        # (H, W) the model is built or trained for; images of another size are resized to it (resize.py).
        # None: a model that takes any size, as the hand-made test backends do.
        self.input_size: tuple[int, int] | None = None
        self.progress: Callable[[int], None] | None = None  # called with the number of samples done
        # The base segmenter alone on a clean image -> uint8 (H, W) labels (clean Dice); set by the runner.
        self.segment: Callable[[np.ndarray], np.ndarray] | None = None
        self.record: dict = {"backend": self.name}  # what a certificate records about the model and backend
        self._noisy = np.empty((0,), np.float32)  # reused across calls; reallocated only when the shape grows

    def infer(self, x_noisy: np.ndarray) -> np.ndarray:
        """float32 (B, C, H, W) -> uint8 labels (B, H, W)."""
        raise NotImplementedError

    def _buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        full = (self.batch_size, *shape)
        if self._noisy.shape != full:  # zeros: the padding of a static batch is never uninitialised memory
            self._noisy = np.zeros(full, np.float32)
        return self._noisy

    def call_batch(self, num: int) -> int:
        """The batch size every sample of a call of `num` samples runs at (static_batch backends)."""
        batches = -(-num // self.batch_size)
        return -(-num // batches)

    def sample_counts(self, x: np.ndarray, num: int, seed: int, offset: int) -> np.ndarray:
        x = check_input(x, self.channels, self.size_multiple)
        counts = np.zeros((self.num_classes, *x.shape[1:]), np.int32)
        noisy = self._buffer(x.shape)
        padded = self.fixed_batch or self.static_batch  # every sample of the call runs at one batch size
        step = self.call_batch(num) if self.static_batch and not self.fixed_batch else self.batch_size
        for start in range(0, num, step):
            b = min(step, num - start)
            _kernels.fill_noisy(x, self.sigma, seed, offset + start, noisy[:b])
            # The padding of a last, partial batch holds stale samples; their labels are dropped.
            labels = self.infer(noisy[:step] if padded else noisy[:b])
            _kernels.accumulate_votes(labels[:b], counts)
            if self.progress is not None:
                self.progress(b)
        return counts


# ---------------------------------------------------------------------------------------------- memory budget
