"""torch-cuda: DenoiseSegment on a CUDA device in fp32, fp16 or bf16 (autocast), in two forms.

``eager``, the PyTorch GPU baseline: the generic host loop (``GraphBackend.sample_counts``): Philox noise
on the host (the compiled extension), each batch copied to the device, the module, labels copied back,
votes on the host.  What a careful PyTorch user writes, with the project's keyed noise.

``fused``, the native TensorRT backend's device loop (``tensorrt.py``) with torch as the engine.  Per batch,
on torch's current stream and without touching host memory::

    cuda_fill_noisy_array        x (device) -> noisy (B, C, H, W), preallocated   (outside the graph)
    DenoiseSegment               noisy -> labels (uint8)                  } captured once as a CUDA graph
    cuda_accumulate_votes_array  labels -> counts (int32 (K, H, W))       } (torch.cuda.CUDAGraph), replayed

and the counts come back to the host once per ``sample_counts`` call.  torch's tensors reach the
extension's kernels as DLPack capsules (no copy).  The noise kernel stays outside the graph because its
arguments (seed, first sample) change every batch and a replayed graph would repeat them; it is one
launch.  A batch smaller than the batch size (the last of a call) runs the same step uncaptured.  Buffers
and the graph belong to one image shape; another shape reallocates them and captures again.

Precision: fp32 is IEEE fp32 (TF32 is switched off for cuDNN convolutions and cuBLAS matmuls, which torch
would otherwise allow for convolutions); fp16/bf16 are torch.autocast on CUDA (without its weight cache,
which CUDA graphs forbid).  A reduced-precision run is a different base model and is certified as itself:
the record names the device, its compute capability and the precision.

All CUDA calls go through ``CudaDevice``, one small class, so the host-side logic (shapes, buffers, the
capture bookkeeping, the record) is tested on machines without a GPU with a stand-in for it.

Documentation used: torch.cuda.graphs ("CUDA Graphs" notes: warm up on a side stream before capture,
static inputs and outputs, autocast with cache_enabled=False), torch.Tensor.__dlpack__ (stream=-1: no
cross-stream synchronisation), torch.backends.cudnn.flags / torch.backends.cuda.matmul.allow_tf32.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable

import numpy as np
import torch

from ...errors import CertsegError
from ..sampling import GraphBackend, check_input

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = ("nchw",)
FORMS = ("eager", "fused")
WARMUP_STEPS = 2  # runs of the step on a side stream before capture (cuDNN/cuBLAS set-up, lazy module loads)


def _dlpack(t: torch.Tensor):
    """A DLPack capsule of `t` for the extension.  stream=-1: no cross-stream synchronisation (torch < 2.12
    otherwise makes the legacy default stream wait on the current one, which breaks a graph capture)."""
    return t.__dlpack__(stream=-1)


class CudaDevice:
    """The CUDA calls of the torch-cuda backend: device, stream, the extension's kernels, graph capture."""

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

    def fill_noisy(self, x: torch.Tensor, sigma: float, seed: int, first_sample: int, out: torch.Tensor) -> None:
        self.ext.cuda_fill_noisy_array(_dlpack(x), sigma, seed, first_sample, _dlpack(out), stream=self.stream())

    def accumulate_votes(self, labels: torch.Tensor, counts: torch.Tensor, bad_label: torch.Tensor) -> None:
        self.ext.cuda_accumulate_votes_array(_dlpack(labels), _dlpack(counts), _dlpack(bad_label),
                                             stream=self.stream())

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


def unavailable(*, form: str = "fused") -> str | None:
    """The reference registry's check (REFERENCES["torch-cuda-eager" / "torch-cuda-fused"]): None where this form
    can run here, else one line saying why not."""
    try:
        require_cuda(kernels=form == "fused")
    except CertsegError as e:
        return str(e).splitlines()[0]
    return None


@contextlib.contextmanager
def _ieee_fp32():
    """No TF32 inside: fp32 means fp32 (torch allows TF32 for cuDNN convolutions by default)."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


class TorchCudaBackend(GraphBackend):
    """DenoiseSegment on a CUDA device: ``form="eager"`` (host noise and votes) or ``"fused"`` (device loop)."""

    name = "torch-cuda"

    def __init__(self, model: torch.nn.Module, *, sigma: float, num_classes: int, channels: int,
                 size_multiple: int = 1, batch_size: int = 16, precision: str = "fp32", form: str = "fused",
                 cuda_graph: bool = True, device=None):
        super().__init__(sigma=sigma, num_classes=num_classes, channels=channels, size_multiple=size_multiple,
                         batch_size=batch_size)
        if precision not in PRECISIONS:
            raise CertsegError(f"torch-cuda precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if form not in FORMS:
            raise CertsegError(f"torch-cuda form {form!r}: choose one of {', '.join(FORMS)}")
        self.gpu = device if device is not None else CudaDevice(kernels=form == "fused")
        if precision == "bf16" and self.gpu.type == "cuda" and not torch.cuda.is_bf16_supported():
            props = self.gpu.properties()
            raise CertsegError(f"bf16 needs a GPU of compute capability >= 8.0 and {props['device']} has "
                               f"{props['compute_capability']}; use precision fp16 or fp32")
        self.precision, self.form = precision, form
        self.cuda_graph = bool(cuda_graph) and form == "fused"
        self.model = model.eval().to(self.gpu.device)
        self.captures = 0  # graphs captured (one per image shape in use), for the record and the tests
        self._shape: tuple[int, int, int] | None = None  # the (C, H, W) the buffers and graph are for
        self._graph = self._graph_output = None
        self.record = {"backend": f"{self.name}:{form}", "form": form, "precision": precision,
                       **self.gpu.properties(), "torch": torch.__version__, "tf32": False,
                       "cuda_graph": "on" if self.cuda_graph else "off"}

    # ---- the model under the backend's precision ---------------------------------------------------------------
    def _run_model(self, noisy: torch.Tensor) -> torch.Tensor:
        dtype = PRECISIONS[self.precision]
        autocast = contextlib.nullcontext() if dtype is None else \
            torch.autocast(self.gpu.type, dtype=dtype, cache_enabled=False)
        with torch.inference_mode(), _ieee_fp32(), autocast:
            return self.model(noisy)

    # ---- eager: the host loop ---------------------------------------------------------------------------------
    def infer(self, x_noisy: np.ndarray) -> np.ndarray:
        """float32 (B, C, H, W) on the host -> uint8 labels (B, H, W) on the host (copies both ways)."""
        batch = torch.from_numpy(np.ascontiguousarray(x_noisy, np.float32)).to(self.gpu.device)
        return self._run_model(batch).cpu().numpy()

    # ---- fused: the device loop -------------------------------------------------------------------------------
    def _allocate(self, shape: tuple[int, int, int]) -> None:
        """Device buffers for images of `shape`, and the graph of a full batch (captured here, once)."""
        self._graph = self._graph_output = None  # frees the previous shape's graph and its memory pool
        dev = self.gpu.device
        self._x = torch.zeros(shape, dtype=torch.float32, device=dev)
        self._noisy = torch.zeros((self.batch_size, *shape), dtype=torch.float32, device=dev)
        self._counts = torch.zeros((self.num_classes, *shape[1:]), dtype=torch.int32, device=dev)
        self._bad = torch.full((1,), -1, dtype=torch.int32, device=dev)
        self._shape = shape
        if self.cuda_graph:
            try:
                # the static output (labels) is kept as long as the graph that writes it
                self._graph, self._graph_output = self.gpu.capture(functools.partial(self._step, self._noisy))
                self.captures += 1
                self.record["cuda_graph"] = "on"
            except (RuntimeError, CertsegError) as e:  # a model torch cannot capture: run it uncaptured, say so
                self.cuda_graph = False
                self.record["cuda_graph"] = f"unavailable ({str(e).splitlines()[0][:160]})"

    def _step(self, noisy: torch.Tensor) -> torch.Tensor:
        """One batch: labels of `noisy`, added into the device counts (the captured part)."""
        labels = self._run_model(noisy)
        self.gpu.accumulate_votes(labels, self._counts, self._bad)
        return labels

    def sample_counts(self, x: np.ndarray, num: int, seed: int, offset: int) -> np.ndarray:
        if self.form == "eager":
            return super().sample_counts(x, num, seed, offset)
        x = check_input(x, self.channels, self.size_multiple)
        if x.shape != self._shape:
            self._allocate(x.shape)
        self._x.copy_(torch.from_numpy(x))
        self._counts.zero_()
        self._bad.fill_(-1)
        for start in range(0, num, self.batch_size):
            b = min(self.batch_size, num - start)
            self.gpu.fill_noisy(self._x, self.sigma, seed, offset + start, self._noisy[:b])
            if self._graph is not None and b == self.batch_size:
                self._graph.replay()
            else:
                self._step(self._noisy[:b])
            if self.progress is not None:
                self.progress(b)  # enqueued, not finished: the GPU catches up at the copy below
        counts = self._counts.cpu().numpy()  # waits for the stream: the one host round trip of the call
        bad = int(self._bad.cpu()[0])
        if bad >= 0:
            raise CertsegError(f"label {bad} out of range for {self.num_classes} classes: the model's output does not "
                               f"match the class count it declares")
        return counts

    def close(self) -> None:
        self._graph = self._graph_output = None
        self._shape = None
        for name in ("_x", "_noisy", "_counts", "_bad"):
            self.__dict__.pop(name, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _segment_clean(segmenter: torch.nn.Module, device, image: np.ndarray) -> np.ndarray:
    """The segmenter alone on a clean image (C, H, W), on the device in fp32 -> uint8 (H, W) labels."""
    with torch.inference_mode(), _ieee_fp32():
        logits = segmenter(torch.from_numpy(np.ascontiguousarray(image, np.float32)[None]).to(device))
    return logits.argmax(1)[0].cpu().numpy().astype(np.uint8)


def open_model(model_dir, sigma: float, *, batch_size: int = 16, precision: str = "fp32", form: str = "fused",
               cuda_graph: bool = True, denoiser: bool = True, threads: int | None = None, layout: str = "nchw",
               max_memory=None, device=None) -> TorchCudaBackend:
    """The reference registry's entry: a model directory's DenoiseSegment on the GPU, with what it certifies
    recorded.  ``threads`` and ``max_memory`` are the CPU runners' (a batch lives in device memory)."""
    from ...adapters import with_adapter

    if layout not in LAYOUTS:
        raise CertsegError(f"torch-cuda layout {layout!r}: choose {' or '.join(LAYOUTS)}")
    if device is None:
        device = CudaDevice(kernels=form == "fused")  # refuses first, before the model is loaded
    from ...export.loaders import load_model_dir
    from ...manifest import hash_files

    source = load_model_dir(model_dir, denoiser=denoiser)
    backend = TorchCudaBackend(source.denoise_segment(sigma), sigma=sigma, num_classes=source.num_classes,
                               channels=source.noise_channels, size_multiple=source.size_multiple,
                               batch_size=batch_size, precision=precision, form=form, cuda_graph=cuda_graph, device=device)
    step = source.one_step(sigma)
    backend.source = source
    backend.segment = functools.partial(_segment_clean, source.segmenter, backend.gpu.device)
    backend.input_size = (source.height, source.width)
    backend.record.update({
        "modality": source.modality,
        "denoiser": None if step is None else {"timestep": step.timestep, "alpha_bar": step.alpha_bar,
                                               **source.denoiser_spec.describe()},
        "model_files": hash_files(source.files),
    })
    # A gray image in front of an RGB denoiser: replicated before the noise, as an engine does (adapters.py).
    return with_adapter(backend, source.adapter)
