"""The sampling loop for backends that run a graph x_noisy -> labels: noise -> infer -> votes.

Noise is generated outside the graph (``certseg_rt.kernels``), keyed by (seed, sample index), so
batching never changes which noise a sample sees and every backend sees the same noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import kernels
from .._ext_loader import ext
from ..errors import CertsegError, InputError
from ..io import check_image_size

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
# Peak memory grows with batch x pixels, so the batch is what a budget limits.  A runner knows its library's
# costs (MemoryCosts, measured by benchmarks/memory_budget.py); the engine's manifest knows the model's
# (field memory: activation bytes of one sample, weights; export/memory.py).

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_memory(value) -> int:
    """'2G', '1.5GiB', '512M', '2000000000' or a number of bytes -> bytes (binary units: 1G = 2**30)."""
    import re

    from ..errors import CertsegError

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in _UNITS:
            raise CertsegError(f"--max-memory {value!r} must be a size such as 2G, 1.5GiB or 512M")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _UNITS[unit])
    if size < 64 << 20:
        raise CertsegError(f"--max-memory {value} is under 64 MiB, less than the runtime itself needs; give e.g. 2G")
    return size


def available_memory() -> int:
    """Bytes this machine can give a new process now: MemAvailable (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def default_memory_budget() -> int:
    """Half of what is available now: room for the image, the caller and other processes."""
    return max(available_memory() // 2, 256 << 20)


@dataclass(frozen=True)
class MemoryEstimate:
    fixed: int  # bytes at any batch size
    per_sample: int  # bytes added by each sample of a batch

    def at(self, batch: int) -> int:
        return self.fixed + batch * self.per_sample


@dataclass(frozen=True)
class MemoryCosts:
    """What a runner's library adds to the model's own numbers, measured on it (peak RSS of a certify):
    ``peak ~= base_bytes + weights_factor * weights + batch * (activation_factor * activations + input/output)``."""

    base_bytes: int  # the process: Python, numpy, the library, the compiled engine's fixed buffers
    activation_factor: float  # blocked layouts, scratch, arenas: bytes held per byte of torch's live tensors
    weights_factor: float = 2.0  # the weights as read from the file plus the library's packed copy

    def estimate(self, manifest: dict) -> MemoryEstimate | None:
        """The estimate for an engine (None if its manifest has no field memory: an engine built before it)."""
        memory = manifest.get("memory")
        if memory is None:
            return None
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1 << 50
        if not isinstance(memory, dict) or not all(number(memory.get(k)) for k in
                                                   ("activation_bytes_per_sample", "weights_bytes")):
            from ..errors import CertsegError
            from ..manifest import REBUILD

            raise CertsegError(f"engine field memory must give activation_bytes_per_sample and weights_bytes as "
                               f"numbers of bytes; {REBUILD}")
        inp = manifest["input"]
        pixels = int(inp["height"]) * int(inp["width"])
        io = pixels * (4 * int(inp["channels"]) + 1)  # the noisy float32 input and the uint8 labels of a sample
        counts = pixels * len(manifest["classes"]) * 4 * 2 + pixels * 8 * 8  # two vote arrays, the statistics
        return MemoryEstimate(
            fixed=int(self.base_bytes + self.weights_factor * memory["weights_bytes"] + counts),
            per_sample=int(self.activation_factor * memory["activation_bytes_per_sample"] + io))


def fit_batch_size(estimate: MemoryEstimate | None, budget: int, smallest: int, largest: int) -> int:
    """The largest batch in [smallest, largest] whose estimated peak fits the budget; one line if none does."""
    from ..errors import CertsegError

    if estimate is None:
        return largest
    fits = (budget - estimate.fixed) // max(estimate.per_sample, 1)
    if fits < smallest:
        raise CertsegError(f"a batch of {smallest} needs about {estimate.at(smallest) / 2**30:.2f} GiB of memory, "
                           f"over the budget of {budget / 2**30:.2f} GiB; raise --max-memory, or rebuild the engine "
                           f"with a smaller minimum batch (--batch-sizes 1,...) or image size")
    return int(min(largest, fits))
