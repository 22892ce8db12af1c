"""The CUDA side of the torch-cuda runners (fused, eager and the careful baseline): every call that needs a GPU.

``CudaDevice`` is one small class holding them (the extension's kernels on torch tensors, graph capture, device
memory, timing, torch's device generator), so the runners' host-side logic (plans, buffers, counters, the record)
runs on machines without a GPU against a stand-in for it (tests/test_torch_cuda.py: ``HostStandIn``).  Also here:
what a torch-cuda runner needs before it starts (``require_cuda``), the precision a model runs at
(``model_precision``), the device batch policy (``fit_device_batch``) and the loop the two packing runners share
(``PackingLoop``: runs in packs, out-of-memory halving).

Documentation used: torch.cuda.graphs ("CUDA Graphs" notes: warm up on a side stream before capture, static
inputs and outputs, autocast with cache_enabled=False), torch.Tensor.__dlpack__ (stream=-1: no cross-stream
synchronisation), torch.backends.cudnn.flags / torch.backends.cuda.matmul.allow_tf32, torch.cuda.mem_get_info,
torch.cuda.max_memory_allocated / reset_peak_memory_stats, torch.cuda.Event(enable_timing=True).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ...errors import CertsegError
from ..memory import MemoryEstimate, fit_batch_size
from ..sampling import Run, device_packs

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
WARMUP_STEPS = 2  # runs of a step on a side stream before capture (cuDNN/cuBLAS set-up, lazy loads, autotuning)
MAX_DEVICE_BATCH = 4096  # samples per forward pass at most: beyond a few hundred the rate per sample is flat
DEFAULT_DEVICE_SHARE = 0.85  # of the device memory free when a runner opens, without --max-memory
PER_SAMPLE_HEADROOM = 1.25  # cuDNN's workspace grows with the batch; the probe measures small batches


def _dlpack(t: torch.Tensor):
    """A DLPack capsule of `t` for the extension.  stream=-1: no cross-stream synchronisation (torch < 2.12
    otherwise makes the legacy default stream wait on the current one, which breaks a graph capture)."""
    return t.__dlpack__(stream=-1)


class CudaDevice:
    """The CUDA calls of the torch-cuda runners: device, stream, kernels, capture, memory, timing, generator."""

    type = "cuda"

    def __init__(self, index: int | None = None, *, kernels: bool = True):
        require_cuda(kernels=kernels)
        self.device = torch.device("cuda", torch.cuda.current_device() if index is None else index)
        from ..._ext_loader import ext

        self.ext = ext

    def properties(self) -> dict:
        major, minor = torch.cuda.get_device_capability(self.device)
        return {"device": torch.cuda.get_device_name(self.device), "compute_capability": f"{major}.{minor}",
                "cuda": torch.version.cuda}

    def stream(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream

    # ---- the fused loop's kernels: the counter (seed, next, end) is read from device memory when they run ----
    def fill_noisy_packed(self, x: torch.Tensor, sigma: float, counter: torch.Tensor, out: torch.Tensor) -> None:
        self.ext.cuda_fill_noisy_packed_array(_dlpack(x), sigma, _dlpack(counter), _dlpack(out), stream=self.stream())

    def accumulate_votes_packed(self, labels: torch.Tensor, counts: torch.Tensor, bad_label: torch.Tensor,
                                counter: torch.Tensor) -> None:
        self.ext.cuda_accumulate_votes_packed_array(_dlpack(labels), _dlpack(counts), _dlpack(bad_label),
                                                    _dlpack(counter), stream=self.stream())

    def advance_counter(self, counter: torch.Tensor, samples: int) -> None:
        self.ext.cuda_advance_counter_array(_dlpack(counter), samples, stream=self.stream())

    def capture(self, step: Callable[[], object]):
        """Warm `step` up on a side stream, then capture it once; returns (graph, the step's static output)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = step()
        return graph, output

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    # ---- memory -----------------------------------------------------------------------------------------------
    def free_memory(self) -> int:
        return torch.cuda.mem_get_info(self.device)[0]

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def activation_bytes(self, run: Callable[[torch.Tensor], object], example: torch.Tensor) -> int:
        """Peak device memory that run(example) adds to what is allocated (torch's allocator, cuDNN workspace
        included)."""
        self.synchronize()
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        run(example)
        self.synchronize()
        return max(torch.cuda.max_memory_allocated(self.device) - base, 0)

    def release(self) -> None:
        """Hand cached blocks back (after an out-of-memory, before a smaller batch is tried)."""
        torch.cuda.empty_cache()

    # ---- timing and torch's generator (the careful baseline's noise) ---------------------------------------------
    def seconds(self, fn: Callable[[], object], repeats: int) -> float:
        """Median seconds of fn() on the device's stream (CUDA events, after one untimed call)."""
        fn()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        return sorted(times)[len(times) // 2]

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def pinned(self, t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory()


def require_cuda(*, kernels: bool = True) -> None:
    """One CertsegError line unless torch sees a CUDA device (and, for the fused form, the CUDA kernels exist)."""
    if not torch.cuda.is_available():
        built = torch.version.cuda
        raise CertsegError(f"the torch-cuda backend needs an NVIDIA GPU, and here there is no CUDA device (torch "
                           f"{torch.__version__}, {'built for CUDA ' + built if built else 'a CPU-only build'}); "
                           f"use the CPU torch reference or an engine directory")
    if kernels:
        from ..._ext_loader import EXTENSION_STATUS, ext

        if not EXTENSION_STATUS["cuda"]:
            raise CertsegError("the fused torch-cuda form needs certseg-rt's CUDA kernels, and this install was built "
                               "without them; reinstall with nvcc on PATH (CERTSEG_CUDA=ON pip install .) or use "
                               "the eager form")
        if ext.cuda_device_count() == 0:
            raise CertsegError("torch sees a CUDA device but certseg-rt's CUDA kernels do not (driver older than "
                               "the CUDA runtime they were built with?); rebuild the extension here or use the eager "
                               "form")


def check_bf16(gpu, precision: str) -> None:
    if precision == "bf16" and gpu.type == "cuda" and not torch.cuda.is_bf16_supported():
        props = gpu.properties()
        raise CertsegError(f"bf16 needs a GPU of compute capability >= 8.0 and {props['device']} has "
                           f"{props['compute_capability']}; use precision fp16 or fp32")


@contextlib.contextmanager
def model_precision(device_type: str, precision: str, *, benchmark: bool = False):
    """inference_mode and the precision a model runs at: fp32 is IEEE fp32 (no TF32, which torch otherwise allows
    for cuDNN convolutions), fp16/bf16 are torch.autocast (without its weight cache, which CUDA graphs forbid).
    benchmark: cuDNN's autotuner (the careful baseline; the fused form keeps the deterministic heuristics)."""
    if precision not in PRECISIONS:
        raise CertsegError(f"torch-cuda precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    autocast = contextlib.nullcontext() if dtype is None else \
        torch.autocast(device_type, dtype=dtype, cache_enabled=False)
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, benchmark=benchmark, allow_tf32=False), \
                autocast:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def memory_budget(gpu, max_memory: int | None) -> int:
    """Device bytes the batches may take: --max-memory less what is already allocated (the weights), else a share
    of the memory free now."""
    if max_memory is None:
        return int(DEFAULT_DEVICE_SHARE * gpu.free_memory())
    return int(max_memory) - gpu.allocated()


def fit_device_batch(gpu, run: Callable[[torch.Tensor], object], shape: tuple[int, int, int], budget: int,
                     requested: int | None, io_bytes_per_sample: int) -> tuple[int, MemoryEstimate]:
    """The largest batch (samples per forward pass) of images of `shape` whose device memory fits `budget`: the
    model's activations measured at batches 1 and 4 (their difference / 3 is a sample's share, with headroom for
    cuDNN's workspace), plus the runner's own buffers per sample; at most `requested` (None: MAX_DEVICE_BATCH).
    One line if not even one sample fits."""
    dev = gpu.device
    one = gpu.activation_bytes(run, torch.zeros((1, *shape), dtype=torch.float32, device=dev))
    four = gpu.activation_bytes(run, torch.zeros((4, *shape), dtype=torch.float32, device=dev))
    per_sample = max((four - one) / 3, 1.0)
    estimate = MemoryEstimate(fixed=int(max(one - per_sample, 0)),
                              per_sample=int(PER_SAMPLE_HEADROOM * per_sample) + int(io_bytes_per_sample))
    try:
        cap = fit_batch_size(estimate, budget, 1, requested or MAX_DEVICE_BATCH)
    except CertsegError:
        raise CertsegError(f"one {shape[1]}x{shape[2]} sample needs about {estimate.at(1) / 2**20:.0f} MiB of device "
                           f"memory, over the budget of {max(budget, 0) / 2**20:.0f} MiB; raise --max-memory or free "
                           f"the GPU")
    return cap, estimate


class PackingLoop:
    """The loop of the runners that pack images (torch-cuda fused and careful), a mixin before GraphBackend.

    ``count_runs`` cuts the runs into packs (``sampling.device_packs``: consecutive runs with one (first, num) side
    by side, the fewest equal packs that fit a batch, padded to one size per data set) and counts each pack in one
    call; ``sample_counts`` is a pack of one.  An out-of-memory halves the batch and tries the call again.  A runner
    defines ``_prepare(shape)`` (its buffers and ``batch_size`` for images of that shape) and ``_pack_counts(xs,
    num, seed, offset)`` (at most batch_size images -> each image's int32 counts)."""

    packs_images = True

    def sample_counts(self, x, num: int, seed: int, offset: int) -> np.ndarray:
        return self._count_pack([self.check_image(x)], num, seed, offset)[0]

    def count_runs(self, runs: Iterable[Run], seed: int) -> Iterator[Run]:
        """Each run's counts, exactly what sample_counts gives it alone (its own noise: seed, sample index), yielded
        as its pack completes, in order."""
        def checked():
            for run in runs:
                if run.num < 1:
                    raise ValueError(f"a run counts at least one sample, got num={run.num}")
                yield run, self.check_image(run.x)

        for pack, real in device_packs(checked(), self._capacity):
            head = pack[0][0]
            counts = self._count_pack([x for _, x in pack], head.num, seed, head.first)
            for (run, _), c in zip(pack[:real], counts):
                run.counts = c if run.counts is None else run.counts + c
                run.counted = run.num
                yield run

    def _capacity(self, shape: tuple[int, int, int], num: int) -> int:
        """Images whose `num` samples each fit one batch of images of `shape` (1 when one image's do not)."""
        self._prepare(tuple(shape))
        return max(1, self.batch_size // num)

    def _count_pack(self, xs: list[np.ndarray], num: int, seed: int, offset: int) -> list[np.ndarray]:
        self._prepare(xs[0].shape)
        while True:
            try:  # more images than a batch holds samples (after a halving): in turn
                step = self.batch_size
                return [c for i in range(0, len(xs), step)
                        for c in self._pack_counts(xs[i:i + step], num, seed, offset)]
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise CertsegError("the GPU ran out of memory at a batch of one sample; free the GPU or lower "
                                       "--max-memory for other processes")
                self._release()
                self.batch_size = max(1, self.batch_size // 2)  # and try again at half the batch
                self.record["max_batch"] = self.batch_size

    def _release(self) -> None:
        self.gpu.release()
