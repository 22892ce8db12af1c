"""The sampling loop for backends that run a graph x_noisy -> labels: noise -> infer -> votes.

Noise is generated outside the graph (``certseg_rt.kernels``), keyed by (seed, sample index), so
batching never changes which noise a sample sees and every backend sees the same noise.

Packing, the one interface: a ``Run`` is samples first .. first + num - 1 of one image's noise stream, and
``count_runs(backend, runs, seed)`` counts many runs (a volume's slices, a data set's images), each run's counts
exactly what ``sample_counts(x, num, seed, first)`` gives it alone.  Where they share batches depends on the loop
(``packs_runs``): the host loop fills every batch across run boundaries (``GraphBackend.count_runs``); a device
loop that packs images (``packs_images``: torch-cuda fused and careful) puts consecutive runs with one (first, num)
side by side, each image in the rows it has alone (``device_packs``); any other backend counts run by run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

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


def equal_batches(num: int, cap: int) -> tuple[int, int]:
    """(batch, count): the fewest batches of at most `cap` samples that hold `num`, all of one size (the last one
    padded): the static-per-call policy of every batching runner (OpenVINO, torch-cuda, the native runtime)."""
    count = -(-num // cap)
    return -(-num // count), count


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
        return equal_batches(num, self.batch_size)[0]

    def check_image(self, x: np.ndarray) -> np.ndarray:
        """The image as this backend takes it, or one line saying why not (engines add their fixed size)."""
        return check_input(x, self.channels, self.size_multiple)

    def sample_counts(self, x: np.ndarray, num: int, seed: int, offset: int) -> np.ndarray:
        x = self.check_image(x)
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

    # Whether count_runs puts several images' runs side by side in a device batch, each image in the rows it has
    # alone (torch-cuda fused and careful): then certify_each and evaluate hand it many images at once.  The host
    # loop shares batches too, but an image's batches then depend on its neighbours, so there images are certified
    # one by one and a 2-D certificate stays the one `certify` (and a Ray worker) gives it.
    packs_images = False

    @property
    def packs_runs(self) -> bool:
        """Whether `count_runs` packs runs into shared batches: true for the host loop above and for a device loop
        that packs images; another backend that overrides `sample_counts` (its own device loop) counts each run
        with that loop instead."""
        return self.packs_images or type(self).sample_counts is GraphBackend.sample_counts

    def count_runs(self, runs: Iterable[Run], seed: int) -> Iterator[Run]:
        """The votes of several runs of samples, packed into full batches: a batch may hold the last samples
        of one image and the first of the next.  Each run is yielded once its counts are complete, in order.

        A run's counts equal ``sample_counts(run.x, run.num, seed, run.first)`` (its noise depends only on
        (seed, sample index)); a static- or fixed-batch backend runs every batch here at ``batch_size``, the
        last one padded, so its counts are those of that batch size.  Runs of another image size than the one
        before start a new batch."""
        rows: list[tuple[Run, int, int]] = []  # (run, first row in the batch, rows) of the batch being filled
        filled, shape, step = 0, None, self.batch_size
        for run in runs:
            if run.num < 1:
                raise ValueError(f"a run counts at least one sample, got num={run.num}")
            x = self.check_image(run.x)
            if run.counts is None:
                run.counts = np.zeros((self.num_classes, *x.shape[1:]), np.int32)
            if x.shape != shape:
                if filled:
                    yield from self._run_batch(rows, filled, step)
                    rows, filled = [], 0
                shape, step = x.shape, self.batch_size  # the torch reference fits its batch to the image size
                noisy = self._buffer(x.shape)
            done = 0
            while done < run.num:
                take = min(step - filled, run.num - done)
                _kernels.fill_noisy(x, self.sigma, seed, run.first + done, noisy[filled:filled + take])
                rows.append((run, filled, take))
                filled, done = filled + take, done + take
                if filled == step:
                    yield from self._run_batch(rows, filled, step)
                    rows, filled = [], 0
        if rows:
            yield from self._run_batch(rows, filled, step)

    def _run_batch(self, rows: list[tuple[Run, int, int]], filled: int, step: int) -> Iterator[Run]:
        """Infer one batch of `filled` samples, add each run's votes, yield the runs it completed."""
        padded = self.fixed_batch or self.static_batch
        # The padding of a last, partial batch holds stale samples; their labels are dropped.
        labels = self.infer(self._noisy[:step] if padded else self._noisy[:filled])
        for run, start, take in rows:
            _kernels.accumulate_votes(labels[start:start + take], run.counts)
            run.counted += take
        if self.progress is not None:
            self.progress(filled)
        for run, _, _ in rows:
            if run.counted == run.num:
                yield run


@dataclass(eq=False)
class Run:
    """Samples first .. first + num - 1 of the noise stream of one image x, counted into `counts` (int32
    (C, H, W); allocated by the loop when None).  `tag` is the caller's (e.g. which slice, which phase)."""

    x: np.ndarray
    first: int
    num: int
    tag: object = None
    counts: np.ndarray | None = None
    counted: int = 0


def count_runs(backend, runs: Iterable[Run], seed: int) -> Iterator[Run]:
    """Each run's votes, yielded as it completes: packed into shared batches where the backend's loop can
    (``packs_runs``: the host loop, device loops that pack images), one ``sample_counts`` call per run otherwise
    (TensorRT, ONNX Runtime on a device, test backends)."""
    if getattr(backend, "packs_runs", False):
        yield from backend.count_runs(runs, seed)
        return
    for run in runs:
        counts = np.asarray(backend.sample_counts(run.x, run.num, seed, run.first))
        run.counts = counts.astype(np.int32, copy=False) if run.counts is None else run.counts + counts
        run.counted = run.num
        yield run


def device_packs(runs: Iterable[tuple[Run, np.ndarray]], capacity: Callable[[tuple, int], int]
                 ) -> Iterator[tuple[list[tuple[Run, np.ndarray]], int]]:
    """(pack, real): checked (run, image) pairs cut into packs for a device loop whose batch gives all its images one
    sample offset (row r: sample first + r % m of image r // m).  Consecutive runs of one image shape with the same
    (first, num) form a block, cut into the fewest equal packs of at most ``capacity(shape, num)`` images (the
    static-per-call rule, applied to images), the last padded with copies of its last run, whose counts are dropped.
    A run unlike its neighbours (a volume's slices: each has its own first sample) is a block of one, counted alone.
    """
    def cut(block):
        size = equal_batches(len(block), capacity(block[0][1].shape, block[0][0].num))[0]
        for i in range(0, len(block), size):
            pack = block[i:i + size]
            yield pack + [pack[-1]] * (size - len(pack)), len(pack)

    block: list[tuple[Run, np.ndarray]] = []
    for run, x in runs:
        if block and (x.shape, run.first, run.num) != (block[0][1].shape, block[0][0].first, block[0][0].num):
            yield from cut(block)
            block = []
        block.append((run, x))
    if block:
        yield from cut(block)
