"""Native TensorRT backend: the sampling loop on the device, replayed as a CUDA graph.

Per batch of noisy samples, all on one CUDA stream and without touching host memory::

    cuda_fill_noisy   x (device) -> the engine's input binding (Philox noise keyed by seed, sample index)
    execute_async_v3  input binding -> labels (uint8, device)              } captured once as a CUDA
    cuda_accumulate_votes  labels -> counts (int32 (K, H, W), device)      } graph, replayed per batch

and the counts are copied to the host once per ``sample_counts`` call.  The noise kernel stays outside
the graph because its arguments (seed, first sample) change every batch and a replayed graph would
repeat them; it is one launch.  Batches smaller than the batch size (the last of a call) run uncaptured
on a second execution context, so the captured context's shapes never change (TensorRT graphs are
bound to the shapes and the context they were captured with).

Layout in the manner of Polygraphy: a loader (``open_tensorrt_backend``: manifest checks, then
``deserialize_engine``) and a runner (``TensorRTBackend``: allocates on construction or ``__enter__``,
frees on ``close``/``__exit__``).  ``tensorrt`` and the CUDA bindings are imported only when used.

CUDA binding: NVIDIA's cuda-python (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6) for
memory, streams and graphs.  It is the binding NVIDIA supports and documents next to TensorRT, it is
a thin 1:1 mapping of the CUDA runtime API (every call returns ``(cudaError_t, *results)``), it ships
as wheels without a toolkit, and it does not bring its own allocator or stream model (as CuPy or
torch would) into a runtime that must stay torch-free.  ``pip install 'certseg-rt[gpu]'`` installs it.

Documentation used (Python API unless noted):
  TensorRT 10.x (10.0-10.16) and 11.x (11.0-11.4): ``Runtime(logger)``, ``Runtime.deserialize_cuda_engine``
  (returns None on failure), ``Runtime.engine_host_code_allowed`` (needed to run version-compatible plans,
  "Version Compatibility" guide), ``ICudaEngine.num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode`` /
  ``get_tensor_dtype`` / ``get_tensor_shape`` / ``get_tensor_profile_shape``, ``create_execution_context``,
  ``IExecutionContext.set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3(stream_handle)``,
  ``ILogger`` subclassing; engine compatibility rules from "Engine Compatibility" (11.1) and the 10.x
  support matrix (standard runtime: versions must match; version-compatible plans run on later versions;
  ``HardwareCompatibilityLevel.AMPERE_PLUS`` engines run on compute capability >= 8.0).
  cuda-python 12.x ``cuda.bindings.runtime``: cudaMalloc/cudaFree, cudaStreamCreateWithFlags,
  cudaMemcpyAsync/cudaMemsetAsync, cudaStreamSynchronize, cudaStreamBeginCapture/cudaStreamEndCapture,
  cudaGraphInstantiateWithFlags/cudaGraphLaunch, cudaGetDeviceProperties.
  ONNX Runtime 1.18+: CUDA/TensorRT EP option ``user_compute_stream``, ``IOBinding.bind_input``/``bind_output``
  on "cuda" memory, run config ``disable_synchronize_execution_providers``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import CertsegError
from ..sampling import GraphBackend, check_input
from .cuda_device import ClosesDeviceResources, DeviceLoop, cuda_ok, cudart, gpu_properties, \
    require_device_kernels

ENGINE_NAME = "model.engine"
INPUT_NAME = "x_noisy"
OUTPUT_NAME = "labels"
AMPERE = (8, 0)


def rebuild_hint(engine_dir=None) -> str:
    return f"rebuild it here with `certseg-rt build-engine --backend tensorrt --out {engine_dir or 'DIR'}`"


# ---- environment -------------------------------------------------------------------------------------------

def import_tensorrt():
    """The tensorrt module, or one CertsegError line saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise CertsegError("the TensorRT backend needs an NVIDIA GPU and the tensorrt package "
                           "(pip install 'certseg-rt[gpu]' on a GPU machine); or build --backend onnxruntime")
    return tensorrt


# ---- the refusal rules (pure) ------------------------------------------------------------------------------

def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(text)))


def check_engine_compatible(manifest: dict, tensorrt_version: str, compute_capability: str, *,
                            gpu: str | None = None, engine_dir=None) -> None:
    """Refuse, in one line, an engine this TensorRT or this GPU cannot run (before its bytes are parsed).

    Without version compatibility an engine runs only on the TensorRT release that built it (major, minor,
    patch and build must match); a version-compatible one on that release or a later one.  Without
    hardware compatibility it runs only on the compute capability it was built for; with it (level
    AMPERE_PLUS) on any GPU of compute capability 8.0 or newer.
    """
    hint = rebuild_hint(engine_dir)
    for field in ("tensorrt", "compute_capability"):
        if not manifest.get(field):
            raise CertsegError(f"engine manifest lacks field {field}, so it cannot be checked against this machine; "
                               f"{hint}")
    built, built_cc = str(manifest["tensorrt"]), str(manifest["compute_capability"])
    built_gpu = manifest.get("gpu") or "unknown GPU"
    if manifest.get("version_compatible"):
        if _version(tensorrt_version) < _version(built):
            raise CertsegError(f"engine was built version-compatible by TensorRT {built} (manifest field tensorrt), "
                               f"which runs on that release or later, and this is TensorRT {tensorrt_version}; "
                               f"upgrade tensorrt or {hint}")
    elif _version(tensorrt_version) != _version(built):
        raise CertsegError(f"engine was built by TensorRT {built} (manifest field tensorrt) and this is TensorRT "
                           f"{tensorrt_version}; an engine runs only on the TensorRT that built it unless built with "
                           f"--version-compatible; {hint}")
    here = gpu or "this GPU"
    if manifest.get("hardware_compatible"):
        if _version(compute_capability)[:2] < AMPERE:
            raise CertsegError(f"engine was built hardware-compatible for Ampere and newer GPUs (compute capability "
                               f">= 8.0, manifest field hardware_compatible) and {here} has compute capability "
                               f"{compute_capability}; {hint}")
    elif _version(compute_capability)[:2] != _version(built_cc)[:2]:
        raise CertsegError(f"engine was built for compute capability {built_cc} ({built_gpu}, manifest field "
                           f"compute_capability) and {here} has {compute_capability}; engines are specific to a GPU "
                           f"architecture unless built with --hardware-compatible; {hint}")


# ---- loader ------------------------------------------------------------------------------------------------

def capturing_logger(trt, echo: Callable[[str], None] | None = None):
    """A tensorrt ILogger that keeps errors (for one-line messages) and passes warnings to `echo`."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            level = int(severity)
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg).strip())
            elif level <= int(trt.ILogger.Severity.WARNING) and echo is not None:
                echo(f"TensorRT: {str(msg).strip()}")

    return _Logger()


def deserialize_engine(path, manifest: dict, *, trt, compute_capability: str, gpu: str | None = None,
                       engine_dir=None, logger=None):
    """Check the manifest against this TensorRT and GPU, then deserialize; returns (engine, runtime, logger).

    The runtime and logger must outlive the engine (TensorRT's object-lifetime rule), so they are returned
    for the caller to keep.
    """
    path = Path(path)
    check_engine_compatible(manifest, trt.__version__, compute_capability, gpu=gpu, engine_dir=engine_dir)
    data = path.read_bytes()
    logger = logger if logger is not None else capturing_logger(trt)
    runtime = trt.Runtime(logger)
    if manifest.get("version_compatible"):
        runtime.engine_host_code_allowed = True  # a version-compatible plan embeds its lean runtime
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        detail = next((e for e in reversed(getattr(logger, "errors", [])) if e), "")
        detail = f": {detail.splitlines()[0][:160]}" if detail else " (the file is truncated or corrupt)"
        raise CertsegError(f"TensorRT {trt.__version__} could not deserialize {path.name}{detail}; "
                           f"{rebuild_hint(engine_dir)}")
    return engine, runtime, logger


def open_tensorrt_backend(engine_dir, manifest: dict | None = None, *, batch_size: int | None = None,
                          cuda_graph: bool = True) -> "TensorRTBackend":
    """Load an engine directory built with --backend tensorrt: hashes, then environment, then versions, then bytes."""
    from ...manifest import load_manifest

    engine_dir = Path(engine_dir)
    manifest = load_manifest(engine_dir) if manifest is None else manifest  # sha256 of every file, first
    if manifest["backend"] != "tensorrt":
        raise CertsegError(f"engine field backend is {manifest['backend']!r}, not 'tensorrt'; open it with the "
                           f"onnxruntime backend or {rebuild_hint(engine_dir)}")
    from . import engine_batch_size

    batch = engine_batch_size(manifest, batch_size)
    trt = import_tensorrt()
    require_device_kernels()
    gpu, cc = gpu_properties()
    engine, runtime, logger = deserialize_engine(engine_dir / manifest.get("engine", ENGINE_NAME), manifest, trt=trt,
                                                 compute_capability=cc, gpu=gpu, engine_dir=engine_dir)
    inp = manifest["input"]
    backend = TensorRTBackend(engine, trt=trt, keep_alive=(runtime, logger), sigma=manifest["sigma"],
                              num_classes=len(manifest["classes"]), channels=inp["channels"], height=inp["height"],
                              width=inp["width"], batch_size=batch, cuda_graph=cuda_graph)
    backend.record.update({"precision": manifest.get("precision"), "tensorrt": trt.__version__, "gpu": gpu,
                           "compute_capability": cc, "engine_built_on": manifest.get("gpu")})
    return backend


def open_engine(engine_dir, manifest: dict, *, batch_size=None, threads=None, provider=None,
                max_memory=None, cache_dir=None, calls=None) -> "TensorRTBackend":
    """The runner registry's entry: the native backend (provider and threads do not apply to it; nor do cache_dir and
    calls: the engine is compiled at build and its CUDA graphs are captured per shape on first use), with the
    clean segmenter from the engine's segmenter.onnx on ONNX Runtime's CPU provider.  The batch's samples
    live in device memory, so a host memory budget (max_memory) does not limit its batch."""
    from ...adapters import image_channels
    from .onnxruntime import OnnxSegmenter, graph_paths

    backend = open_tensorrt_backend(engine_dir, manifest, batch_size=batch_size)
    backend.segment = OnnxSegmenter(graph_paths(Path(engine_dir), manifest)[1], image_channels(manifest))
    return backend


# ---- runner ------------------------------------------------------------------------------------------------

class TensorRTBackend(ClosesDeviceResources, GraphBackend):
    """A deserialized engine x_noisy -> labels, with device buffers allocated once and a CUDA graph per batch.

    ``sample_counts`` keeps everything on the device (module doc).  ``infer`` runs a host batch through the
    engine (host -> device -> host), so the generic host loop (``host_sample_counts``: CPU noise, engine,
    CPU votes) is available for comparison.  Same counts either way for the same seed.
    """

    name = "tensorrt"
    provider = "native"

    def __init__(self, engine, *, trt, sigma, num_classes, channels, height, width, batch_size,
                 input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME, cuda_graph: bool = True,
                 keep_alive=()):
        super().__init__(sigma=sigma, num_classes=num_classes, channels=channels, size_multiple=1,
                         batch_size=batch_size)
        self.engine, self.trt, self._keep_alive = engine, trt, keep_alive
        self.height, self.width = int(height), int(width)
        self.input_size = (self.height, self.width)
        self.input_name, self.output_name = input_name, output_name
        self._check_io()
        self._loop = DeviceLoop(channels=channels, height=height, width=width, num_classes=num_classes,
                                 batch_size=batch_size)
        self._context = self._new_context()  # uncaptured: any batch size, host inference
        self._context_batch = 0
        self._graph_context = None
        self._graph_exec = None
        self.cuda_graph = bool(cuda_graph)
        status = "off"
        if self.cuda_graph:
            try:
                self._capture()
                status = "on"
            except CertsegError as e:  # an engine TensorRT cannot capture: run it uncaptured, and say so
                self.cuda_graph = False
                status = f"unavailable ({e})"
        self.record = {"backend": f"{self.name}:{self.provider}", "cuda_graph": status}

    def _check_io(self) -> None:
        trt, e = self.trt, self.engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        expect = {self.input_name: (trt.TensorIOMode.INPUT, trt.DataType.FLOAT),
                  self.output_name: (trt.TensorIOMode.OUTPUT, trt.DataType.UINT8)}
        if sorted(names) != sorted(expect):
            raise CertsegError(f"engine has I/O tensors {names}, expected {sorted(expect)}; {rebuild_hint()}")
        for name, (mode, dtype) in expect.items():
            if e.get_tensor_mode(name) != mode or e.get_tensor_dtype(name) != dtype:
                raise CertsegError(f"engine tensor {name} is {e.get_tensor_mode(name)} {e.get_tensor_dtype(name)}, "
                                   f"expected {mode} {dtype}; {rebuild_hint()}")
        lo, _, hi = (tuple(s) for s in e.get_tensor_profile_shape(self.input_name, 0))
        if tuple(lo[1:]) != (self.channels, self.height, self.width) or not lo[0] <= self.batch_size <= hi[0]:
            raise CertsegError(f"engine input profile {lo}..{hi} does not take batches of "
                               f"({self.batch_size}, {self.channels}, {self.height}, {self.width}); {rebuild_hint()}")

    def _new_context(self):
        context = self.engine.create_execution_context()
        if context is None:
            raise CertsegError("TensorRT could not create an execution context (out of device memory?)")
        context.set_tensor_address(self.input_name, self._loop.noisy.ptr)
        context.set_tensor_address(self.output_name, self._loop.labels.ptr)
        return context

    def _enqueue(self, context, batch: int) -> None:
        if not context.execute_async_v3(self._loop.handle):
            raise CertsegError(f"TensorRT execution failed for a batch of {batch}")

    def _set_batch(self, context, batch: int) -> None:
        if not context.set_input_shape(self.input_name, (batch, self.channels, self.height, self.width)):
            raise CertsegError(f"TensorRT refused input shape ({batch}, {self.channels}, {self.height}, {self.width})")

    def _run_uncaptured(self, batch: int) -> bool:
        if batch != self._context_batch:
            self._set_batch(self._context, batch)
            self._context_batch = batch
        self._enqueue(self._context, batch)
        return False  # votes not included

    def _capture(self) -> None:
        """Capture [execute full batch; accumulate its votes] on a context of its own, once."""
        rt, loop, b = cudart(), self._loop, self.batch_size
        context = self._new_context()
        self._set_batch(context, b)
        self._enqueue(context, b)  # TensorRT finishes its lazy set-up outside the capture
        loop.synchronize()
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_ok(rt.cudaStreamBeginCapture(loop.stream, mode), "cudaStreamBeginCapture")
        error = None
        try:
            self._enqueue(context, b)
            loop.votes(b)
        except Exception as e:  # the capture must still be ended before anything else uses the stream
            error = e
        result = rt.cudaStreamEndCapture(loop.stream)
        if error is not None:
            if isinstance(result, tuple) and len(result) > 1 and result[1] is not None \
                    and result[0] == rt.cudaError_t.cudaSuccess:
                rt.cudaGraphDestroy(result[1])
            raise CertsegError(f"CUDA graph capture failed: {error}")
        graph = cuda_ok(result, "cudaStreamEndCapture")
        try:
            self._graph_exec = cuda_ok(rt.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiateWithFlags")
        finally:
            rt.cudaGraphDestroy(graph)
        self._graph_context = context

    def _run_batch(self, batch: int) -> bool:
        if self.cuda_graph and batch == self.batch_size:
            cuda_ok(cudart().cudaGraphLaunch(self._graph_exec, self._loop.stream), "cudaGraphLaunch")
            return True  # the graph votes too
        return self._run_uncaptured(batch)

    def sample_counts(self, x: np.ndarray, num: int, seed: int, offset: int) -> np.ndarray:
        x = self._checked(x)
        return self._loop.run(x, num, seed, offset, self.sigma, self._run_batch, self.progress)

    def host_sample_counts(self, x: np.ndarray, num: int, seed: int, offset: int) -> np.ndarray:
        """The generic host loop (CPU noise -> this engine -> CPU votes): the reference for the device loop."""
        return GraphBackend.sample_counts(self, self._checked(x), num, seed, offset)

    def infer(self, x_noisy: np.ndarray) -> np.ndarray:
        x_noisy = np.ascontiguousarray(x_noisy, np.float32)
        out = np.empty((x_noisy.shape[0], self.height, self.width), np.uint8)
        for start in range(0, x_noisy.shape[0], self.batch_size):
            chunk = x_noisy[start:start + self.batch_size]
            self._loop.copy_in(self._loop.noisy.ptr, chunk)
            self._run_uncaptured(chunk.shape[0])
            self._loop.copy_out(out[start:start + chunk.shape[0]], self._loop.labels.ptr)
            self._loop.synchronize()
        return out

    def _checked(self, x) -> np.ndarray:
        x = check_input(x, self.channels)
        if x.shape[1:] != (self.height, self.width):
            raise CertsegError(f"image is {x.shape[1]}x{x.shape[2]} but the engine was built for "
                               f"{self.height}x{self.width}; resize the image or rebuild with "
                               f"`certseg-rt build-engine --backend tensorrt --image-size {x.shape[1]}`")
        return x

    def close(self) -> None:
        if getattr(self, "_graph_exec", None) is not None:
            cudart().cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None
        self._graph_context = self._context = None
        if getattr(self, "_loop", None) is not None:
            self._loop.close()
            self._loop = None
