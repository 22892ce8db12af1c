"""torch-cuda: DenoiseSegment on a CUDA device in fp32, fp16 or bf16 (autocast), in two forms.

``fused``, the device loop at the device's limit.  A call (``sample_counts``: one image; ``count_runs``: the runs
of several images with one (first, num) packed into one batch, each image with its own noise stream and counts,
``torch_cuda_device.PackingLoop``) is::

    x (P images) copied in; the counter (seed, first sample, end) copied in from pinned host memory
    k replays of ONE captured CUDA graph (torch.cuda.CUDAGraph) of a batch of P x m rows:
        cuda_fill_noisy_packed        x, counter -> noisy   row r: sample next + r % m of image r // m (Philox)
        DenoiseSegment                noisy -> labels       (optionally torch.compile'd: torch_compile.py)
        cuda_accumulate_votes_packed  labels -> counts (P, K, H, W); rows at or past `end` are padding, not counted
        cuda_advance_counter          next += m             (one thread: the next replay draws the next samples)
    one copy back: the counts and the largest out-of-range label, in one buffer

so a certify (n0 10 + n 100) is two replays and two copies.  The noise kernel reads its seed and first sample
from device memory, so it sits inside the graph and a replay needs no new capture.  **Batching**, static per call
(as OpenVINO's): the call's m samples per image in one batch, or the fewest equal batches that fit the device
memory budget (``fit_device_batch``: --max-memory applies to device memory; default 85% of what is free), the
last padded; every sample of a call runs at one batch size (reduced precision's labels can depend on it).
One graph per (images, rows per image), at most ``MAX_GRAPHS`` per image shape; an out-of-memory halves the
batch and tries again.  Noise is the project's keyed Philox, so counts equal the eager form's at the same
batch sizes, device and precision.  Packed images (``exact_packing``): at fp32 each image's rows go through the
model on their own inside the graph (the batch it runs at alone: packing never changes a fp32 label), at
fp16/bf16 the whole batch at once.  The packed kernels give every image of a batch one sample offset, so a
volume's slices (each its own first sample) are counted slice by slice here.

``eager``, the weak PyTorch GPU baseline, kept to compare with the earlier measurements: the generic host loop
(``GraphBackend.sample_counts``, batch 16 by default, static per call): Philox noise on the host, each batch copied
in and its labels copied out, votes on the host.  The careful baseline is ``torch_cuda_careful``.

Precision: fp32 is IEEE fp32 (no TF32); fp16/bf16 are torch.autocast (``torch_cuda_device.model_precision``).  A
reduced-precision or compiled run is a different base model, certified as itself: the record names the device,
its compute capability, the precision, the form, the compile variant and its parity, and the batch sizes.

All CUDA calls go through ``CudaDevice`` (torch_cuda_device.py), so the host-side logic (plans, buffers, the
counter, the capture bookkeeping, packing, the record) is tested without a GPU against a stand-in for it.
"""
from __future__ import annotations

import functools
import time
from collections import OrderedDict

import numpy as np
import torch

from ...errors import CertsegError
from ..sampling import GraphBackend, equal_batches
from .torch_compile import PARITY_SAMPLES, VARIANTS, CompiledModel, check_parity, graphs_so_far, label_agreement
from .torch_cuda_device import (
    MAX_DEVICE_BATCH,
    WARMUP_STEPS,  # noqa: F401  (the stand-in in the tests mirrors it)
    CudaDevice,
    PackingLoop,
    check_bf16,
    fit_device_batch,
    memory_budget,
    model_precision,
    require_cuda,
)

PRECISIONS = ("fp32", "fp16", "bf16")
LAYOUTS = ("nchw",)
FORMS = ("eager", "fused")
EAGER_BATCH = 16  # the eager baseline's batch, as measured before
MAX_GRAPHS = 4  # captured graphs kept per image shape (a certify needs two: n0's batch and n's)
BATCH_RULE = "static per call: the fewest equal batches of at most max_batch samples, the last padded"


def unavailable(*, form: str = "fused") -> str | None:
    """The reference registry's check: None where this form can run here, else one line saying why not."""
    try:
        require_cuda(kernels=form == "fused")
    except CertsegError as e:
        return str(e).splitlines()[0]
    return None


def _word(value: int) -> int:
    """A uint64 counter word as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return value - (1 << 64) if value >= 1 << 63 else value


class TorchCudaBackend(PackingLoop, GraphBackend):
    """DenoiseSegment on a CUDA device: ``form="fused"`` (the device loop) or ``"eager"`` (host noise and votes)."""

    name = "torch-cuda"
    static_batch = True  # every sample of a call at one batch size

    def __init__(self, model: torch.nn.Module, *, sigma: float, num_classes: int, channels: int,
                 size_multiple: int = 1, batch_size: int | None = None, precision: str = "fp32",
                 form: str = "fused", cuda_graph: bool = True, compile: str | None = None,
                 compile_backend: str = "inductor", max_memory: int | None = None, device=None):
        if precision not in PRECISIONS:
            raise CertsegError(f"torch-cuda precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if form not in FORMS:
            raise CertsegError(f"torch-cuda form {form!r}: choose one of {', '.join(FORMS)}")
        if compile is not None and (form != "fused" or compile not in VARIANTS):
            raise CertsegError(f"torch-cuda compile {compile!r}: the fused form takes {' or '.join(VARIANTS)}")
        default = EAGER_BATCH if form == "eager" else MAX_DEVICE_BATCH
        super().__init__(sigma=sigma, num_classes=num_classes, channels=channels, size_multiple=size_multiple,
                         batch_size=batch_size or default)
        self.gpu = device if device is not None else CudaDevice(kernels=form == "fused")
        check_bf16(self.gpu, precision)
        self.precision, self.form, self.requested_batch, self.max_memory = precision, form, batch_size, max_memory
        self.cuda_graph = bool(cuda_graph) and form == "fused"
        self.model = model.eval().to(self.gpu.device)
        self.net = self.model if compile is None else \
            CompiledModel(self.model, variant=compile, backend=compile_backend, device_type=self.gpu.type)
        self.captures = 0  # graphs captured, for the record and the tests
        self._shape: tuple[int, int, int] | None = None  # the (C, H, W) the buffers and graphs are for
        self._images = 0  # images the x and counts buffers hold
        self._graphs: OrderedDict = OrderedDict()  # (images, rows per image) -> (graph, static labels)
        suffix = "" if compile is None else f":{compile}"
        self.record = {"backend": f"{self.name}:{form}{suffix}", "form": form, "precision": precision,
                       **self.gpu.properties(), "torch": torch.__version__, "tf32": False,
                       "cuda_graph": "on" if self.cuda_graph else "off", "noise": "philox (keyed: seed, sample index)",
                       "compiled": None, "batch_rule": BATCH_RULE}

    # ---- the model under the backend's precision ---------------------------------------------------------------
    def _run_model(self, noisy: torch.Tensor, *, net=None, precision: str | None = None) -> torch.Tensor:
        with model_precision(self.gpu.type, precision or self.precision):
            return (net or self.net)(noisy)

    # ---- eager: the host loop ---------------------------------------------------------------------------------
    def infer(self, x_noisy: np.ndarray) -> np.ndarray:
        """float32 (B, C, H, W) on the host -> uint8 labels (B, H, W) on the host (copies both ways)."""
        batch = torch.from_numpy(np.ascontiguousarray(x_noisy, np.float32)).to(self.gpu.device)
        return self._run_model(batch).cpu().numpy()

    # ---- fused: buffers, plans and graphs -----------------------------------------------------------------------
    def _prepare(self, shape: tuple[int, int, int]) -> None:
        """Buffers for images of `shape` and the largest batch that fits the device memory budget."""
        if shape == self._shape:
            return
        self.close()
        dev = self.gpu.device
        io = 4 * int(np.prod(shape)) + shape[1] * shape[2]  # a sample's noisy row (float32) and labels (uint8)
        budget = memory_budget(self.gpu, self.max_memory)
        # measured on the uncompiled model: a batch of 1 would make a compiled one specialise (and compile again)
        self.batch_size, _ = fit_device_batch(self.gpu, functools.partial(self._run_model, net=self.model), shape,
                                              budget, self.requested_batch, io)
        self._noisy = torch.zeros((self.batch_size, *shape), dtype=torch.float32, device=dev)
        self._counter = torch.zeros((3,), dtype=torch.int64, device=dev)  # (seed, next, end), read by the kernels
        self._counter_host = self.gpu.pinned(torch.zeros((3,), dtype=torch.int64))
        self._shape = shape
        self.record["max_batch"] = self.batch_size
        if self.compiled:  # this size's compile, timed apart from any certify: a small and a
            # larger batch, as the convolutions' backend choice can guard a batch range (then two graphs)
            self.net.warm(self._run_model, *(torch.zeros((b, *shape), dtype=torch.float32, device=dev)
                                             for b in sorted({min(4, self.batch_size), min(64, self.batch_size)})))
            if self.record["compiled"] is not None:
                self.record["compiled"].update(self.net.describe())

    def _hold_images(self, images: int) -> None:
        """x (images, C, H, W) and out = [bad label, counts (images, K, H, W)]: one buffer, one copy back."""
        if images <= self._images:
            return
        self._graphs.clear()  # the graphs read the buffers being replaced
        dev, (_, h, w) = self.gpu.device, self._shape
        self._x = torch.zeros((images, *self._shape), dtype=torch.float32, device=dev)
        self._out = torch.zeros((1 + images * self.num_classes * h * w,), dtype=torch.int32, device=dev)
        self._images = images

    def _counts(self, images: int) -> torch.Tensor:
        h, w = self._shape[1:]
        return self._out[1:1 + images * self.num_classes * h * w].view(images, self.num_classes, h, w)

    def _step(self, images: int, rows: int) -> torch.Tensor:
        """One batch of images x rows samples: noise -> model -> votes -> counter (the captured part)."""
        noisy = self._noisy[:images * rows]
        self.gpu.fill_noisy_packed(self._x[:images], self.sigma, self._counter, noisy)
        if images > 1 and self.exact_packing:
            labels = torch.cat([self._run_model(noisy[i * rows:(i + 1) * rows]) for i in range(images)])
        else:
            labels = self._run_model(noisy).contiguous()  # (a compiled model may choose its output's strides)
        self.gpu.accumulate_votes_packed(labels, self._counts(images), self._out[:1], self._counter)
        self.gpu.advance_counter(self._counter, rows)
        return labels

    def _graph(self, images: int, rows: int):
        """The captured graph of a batch of images x rows (None: uncaptured).  Its warm-up and capture run the step,
        which moves the counter and adds votes: both are reset before the replays."""
        key = (images, rows)
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key][0]
        if not self.cuda_graph:
            return None
        while len(self._graphs) >= MAX_GRAPHS:
            self._graphs.popitem(last=False)
        start, graphs = time.perf_counter(), graphs_so_far() if self.compiled else 0
        try:
            self._graphs[key] = self.gpu.capture(functools.partial(self._step, images, rows))
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, CertsegError) as e:  # a model torch cannot capture: run it uncaptured, say so
            self.cuda_graph = False
            self.record["cuda_graph"] = f"unavailable ({str(e).splitlines()[0][:160]})"
            return None
        seconds = time.perf_counter() - start
        self.captures += 1
        self.record["capture_seconds"] = round(self.record.get("capture_seconds", 0) + seconds, 3)
        if self.compiled:  # a batch range compiled in the warm-up: compile time, recorded as such
            self.net.note_recompiles(graphs, seconds)
            if self.record["compiled"] is not None:
                self.record["compiled"].update(self.net.describe())
        return self._graphs[key][0]

    @property
    def compiled(self) -> bool:
        return isinstance(self.net, CompiledModel)

    # ---- fused: calls (PackingLoop: sample_counts, count_runs, the out-of-memory halving) -------------------------
    def sample_counts(self, x: np.ndarray, num: int, seed: int, offset: int) -> np.ndarray:
        if self.form == "eager":
            return GraphBackend.sample_counts(self, x, num, seed, offset)
        return super().sample_counts(x, num, seed, offset)

    @property
    def packs_images(self) -> bool:
        """The fused form packs images (count_runs); the eager one keeps the weak baseline's loop, run by run."""
        return self.form == "fused"

    def _release(self) -> None:
        self._graphs.clear()
        self.gpu.release()

    def _pack_counts(self, xs, num, seed, offset):
        """Counts of samples offset .. offset + num - 1 of noise stream `seed` for each image: the images' samples
        in one batch (at most batch_size images), each image's noise and counts exactly what it gets alone."""
        images = len(xs)
        rows, replays = equal_batches(num, self.batch_size // images)
        if offset + rows * replays > 1 << 64:
            raise CertsegError(f"sample indices {offset} .. {offset + rows * replays - 1} pass 2^64; use a smaller "
                               f"offset or n")
        self._hold_images(images)
        graph = self._graph(images, rows)
        self._x[:images].copy_(torch.from_numpy(np.stack(xs)))
        self._counter_host.copy_(torch.tensor([_word(seed), _word(offset), _word(offset + num)], dtype=torch.int64))
        self._counter.copy_(self._counter_host, non_blocking=True)
        used = self._out[:1 + images * self.num_classes * int(np.prod(self._shape[1:]))]
        used.zero_()
        used[:1].fill_(-1)
        for r in range(replays):
            if graph is not None:
                graph.replay()
            else:
                self._step(images, rows)
            if self.progress is not None:
                self.progress(min(rows, num - r * rows))  # enqueued, not finished: the copy below waits
        host = used.to("cpu", copy=True).numpy()  # the call's one host round trip (a copy on any device)
        if host[0] >= 0:
            raise CertsegError(f"label {host[0]} out of range for {self.num_classes} classes: the model's output does "
                               f"not match the class count it declares")
        self.record.update({"batch_size": images * rows, "packed_images": images})
        return list(host[1:].reshape(images, self.num_classes, *self._shape[1:]))

    # ---- the forward-pass limit (bench) ------------------------------------------------------------------------
    def forward_seconds_per_sample(self, shape: tuple[int, int, int], batch: int, *, compiled: bool = False,
                                   repeats: int = 20) -> float:
        """The model's forward passes alone (no noise, no votes, no copies) at `batch`, captured as a CUDA graph and
        replayed: what a certify of this model at this precision can at best approach, per sample."""
        noisy = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(0)).to(self.gpu.device)
        step = functools.partial(self._run_model, noisy, net=self.net if compiled else self.model)
        graph, _ = self.gpu.capture(step)
        return self.gpu.seconds(graph.replay, repeats) / batch

    def compile_and_check(self, x: np.ndarray) -> None:
        """Compile on the noisy inputs x (N, C, H, W), timed apart, and check the compiled model's labels on them
        against the uncompiled model in IEEE fp32 (one line below the floor)."""
        inputs = torch.from_numpy(x).to(self.gpu.device)
        self.net.warm(self._run_model, inputs, torch.zeros((64, *x.shape[1:]), dtype=torch.float32,
                                                           device=self.gpu.device))  # as _prepare warms a size
        reference = functools.partial(self._run_model, net=self.model, precision="fp32")
        agreement = label_agreement(reference, self._run_model, x, self.gpu.device)
        self.record["compiled"] = {**self.net.describe(), "parity": check_parity(agreement, self.precision,
                                                                                 self.net.variant)}

    @property
    def exact_packing(self) -> bool:
        """fp32: packed images' samples go through the model one image at a time inside the graph (the batch each
        runs at alone), so packing never changes a label; fp16/bf16: one batch (faster; a reduced-precision label
        can depend on the batch size, which the record gives)."""
        return self.precision == "fp32"

    def close(self) -> None:
        self._graphs.clear()
        self._shape, self._images = None, 0
        for name in ("_x", "_noisy", "_out", "_counter", "_counter_host"):
            self.__dict__.pop(name, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def segment_clean(segmenter: torch.nn.Module, device, image: np.ndarray) -> np.ndarray:
    """The segmenter alone on a clean image (C, H, W), on the device in IEEE fp32 -> uint8 (H, W) labels."""
    with model_precision(device.type, "fp32"):
        logits = segmenter(torch.from_numpy(np.ascontiguousarray(image, np.float32)[None]).to(device))
    return logits.argmax(1)[0].cpu().numpy().astype(np.uint8)


def describe_source(backend, source, sigma: float) -> None:
    """What a torch-cuda runner certifies, from the model directory: on the backend and in its record."""
    from ...manifest import hash_files

    step = source.one_step(sigma)
    backend.source = source
    backend.segment = functools.partial(segment_clean, source.segmenter, backend.gpu.device)
    backend.input_size = (source.height, source.width)
    backend.record.update({
        "modality": source.modality,
        "denoiser": None if step is None else {"timestep": step.timestep, "alpha_bar": step.alpha_bar,
                                               **source.denoiser_spec.describe()},
        "model_files": hash_files(source.files),
    })


def open_model(model_dir, sigma: float, *, batch_size: int | None = None, precision: str = "fp32",
               form: str = "fused", cuda_graph: bool = True, denoiser: bool = True, threads: int | None = None,
               layout: str = "nchw", max_memory=None, variant: str | None = None, compile_backend: str = "inductor",
               device=None):
    """The reference registry's entry: a model directory's DenoiseSegment on the GPU, with what it certifies
    recorded.  batch_size: at most this many samples per forward pass (None: the device memory decides; the eager
    form: 16); max_memory: device bytes; variant: a compile variant of the fused form (torch_compile.VARIANTS);
    ``threads`` is the CPU runners'."""
    from ...adapters import with_adapter
    from ...export.loaders import load_model_dir
    from ...runtime.memory import parse_memory

    if layout not in LAYOUTS:
        raise CertsegError(f"torch-cuda layout {layout!r}: choose {' or '.join(LAYOUTS)}")
    if device is None:
        device = CudaDevice(kernels=form == "fused")  # refuses first, before the model is loaded
    source = load_model_dir(model_dir, denoiser=denoiser)
    backend = TorchCudaBackend(source.denoise_segment(sigma), sigma=sigma, num_classes=source.num_classes,
                               channels=source.noise_channels, size_multiple=source.size_multiple,
                               batch_size=batch_size, precision=precision, form=form, cuda_graph=cuda_graph,
                               compile=variant, compile_backend=compile_backend,
                               max_memory=None if max_memory is None else parse_memory(max_memory), device=device)
    describe_source(backend, source, sigma)
    if variant is not None:  # at the model's input size, on noisy held-out phantoms (the project's keyed noise)
        from ...export.parity import parity_inputs

        backend.compile_and_check(parity_inputs(source, sigma, PARITY_SAMPLES))
    # A gray image in front of an RGB denoiser: replicated before the noise, as an engine does (adapters.py).
    return with_adapter(backend, source.adapter)
