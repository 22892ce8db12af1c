"""ONNX Runtime backend: the fused graph x_noisy -> labels in a session, fed through IOBinding.

Buffers are bound once per batch size, so the sampling loop allocates nothing per batch.
CPU by default; CUDA and TensorRT execution providers are selectable when onnxruntime-gpu finds a GPU
(inputs still come from host memory here; device-resident sampling is the native TensorRT backend's job).
"""
from __future__ import annotations

import numpy as np

from ...errors import CertsegError
from ...manifest import REBUILD
from ..memory import MemoryCosts
from ..sampling import GraphBackend, check_engine_size, check_input

# Measured by benchmarks/memory_budget.py (peak RSS of certify at 512x512, batches 1 and 8: 446 and 2518 MB, 296 MB
# per sample against 105 MB of torch's live tensors): ONNX Runtime's arena and its NCHWc reorders hold ~2.8x
# what torch's forward pass holds.  Rounded up, so that an estimate errs on the safe side.
MEMORY = MemoryCosts(base_bytes=250 << 20, activation_factor=2.85)
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def make_session(path, provider: str = "cpu", threads: int | None = None):
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise CertsegError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    available = ort.get_available_providers()
    if PROVIDERS[provider] not in available:
        raise CertsegError(f"ONNX Runtime here has no {PROVIDERS[provider]} (available: {', '.join(available)}); "
                           f"install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --provider cpu")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = threads
    providers = [PROVIDERS[provider]] + (["CPUExecutionProvider"] if provider != "cpu" else [])
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CertsegError(f"cannot load {path} with ONNX Runtime ({first[:200]}); the file is corrupt or was "
                           f"built for another version: rebuild with `certseg-rt build-engine`")


class OnnxRuntimeBackend(GraphBackend):
    name = "onnxruntime"

    def __init__(self, session, *, sigma, num_classes, channels, height, width, batch_size, provider="cpu"):
        super().__init__(sigma=sigma, num_classes=num_classes, channels=channels, size_multiple=1,
                         batch_size=batch_size)
        self.session = session
        self.input_size = (int(height), int(width))
        self.provider = provider
        self.height, self.width = height, width
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self._labels = np.empty((batch_size, height, width), np.uint8)
        self._bindings: dict[int, object] = {}

    def _binding(self, noisy: np.ndarray):
        b = noisy.shape[0]
        key = (b, noisy.ctypes.data)
        binding = self._bindings.get(key)
        if binding is None:
            import onnxruntime as ort

            binding = self.session.io_binding()
            # An OrtValue over the numpy buffer (no copy): the loop refills the buffer, the binding stays.
            self._inputs = getattr(self, "_inputs", []) + [ort.OrtValue.ortvalue_from_numpy(noisy)]
            binding.bind_ortvalue_input(self.input_name, self._inputs[-1])
            binding.bind_output(self.output_name, "cpu", 0, np.uint8, self._labels[:b].shape,
                                self._labels.ctypes.data)
            self._bindings[key] = binding
        return binding

    def infer(self, x_noisy: np.ndarray) -> np.ndarray:
        self.session.run_with_iobinding(self._binding(x_noisy))
        return self._labels[:x_noisy.shape[0]]

    def check_image(self, x):
        check_engine_size(x, self.height, self.width)
        return super().check_image(x)


def check_versions(manifest: dict) -> None:
    """The engine was built with this onnxruntime release (major.minor): graphs optimised offline by another
    release may not load, or may not compute the same labels."""
    import onnxruntime

    built = manifest["tools"].get("onnxruntime")
    here = onnxruntime.__version__
    if built is None or built.split(".")[:2] != here.split(".")[:2]:
        raise CertsegError(f"engine field tools.onnxruntime is {built}, but this is onnxruntime {here}; install "
                           f"onnxruntime=={built} or {REBUILD.replace('rebuild it', 'rebuild the engine')}")


def check_graph_matches(session, manifest: dict, name: str) -> None:
    """The fused graph is what the manifest says: labels out, its input shape, and (where the graph
    records them) its sigma and classes.  A manifest edited by hand, or copied from another engine, fails here."""
    import json

    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    want = manifest["input"]
    shape = [want["channels"], want["height"], want["width"]]
    if out.type != "tensor(uint8)" or any(isinstance(d, int) and d != w for d, w in zip(inp.shape[1:], shape)):
        raise CertsegError(f"engine graph {name} takes {inp.shape} and gives {out.type}, but the manifest (field "
                           f"input) describes labels (uint8) of a {shape} image; {REBUILD}")
    meta = session.get_modelmeta().custom_metadata_map
    try:
        if "sigma" in meta and not np.isclose(float(meta["sigma"]), manifest["sigma"], rtol=0, atol=1e-9):
            raise CertsegError(f"engine field sigma is {manifest['sigma']} but {name} was built for sigma "
                               f"{meta['sigma']}; {REBUILD}")
        if "classes" in meta and json.loads(meta["classes"]) != manifest["classes"]:
            raise CertsegError(f"engine field classes lists {len(manifest['classes'])} classes, but {name} was "
                               f"built for {meta['classes']}; {REBUILD}")
    except (ValueError, TypeError):
        raise CertsegError(f"engine graph {name} has unreadable metadata (sigma, classes); {REBUILD}")


def graph_paths(engine_dir, manifest: dict) -> tuple:
    """(fused graph, segmenter graph) named by the manifest's field graphs."""
    graphs = manifest.get("graphs") or {}
    if not graphs.get("fused") or not graphs.get("segmenter"):
        raise CertsegError(f"engine field graphs must name the fused and the segmenter graph; {REBUILD}")
    return engine_dir / graphs["fused"], engine_dir / graphs["segmenter"]


class OnnxSegmenter:
    """The base segmenter alone (segmenter.onnx) on clean images, for the clean Dice: uint8 (H, W) labels.
    The session is created on first use: certifying never needs it."""

    def __init__(self, path, channels: int):
        self.path, self.channels, self._session = path, channels, None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self._session is None:
            self._session = make_session(self.path)
        x = check_input(image, self.channels)[None]
        batch = self._session.get_inputs()[0].shape[0]
        if isinstance(batch, int) and batch > 1:  # a fixed-batch graph: run the image with copies of itself
            x = np.repeat(x, batch, axis=0)
        logits = self._session.run(None, {self._session.get_inputs()[0].name: x})[0]
        return np.argmax(logits[0], axis=0).astype(np.uint8)


def open_engine(engine_dir, manifest: dict, *, batch_size=None, threads=None, provider: str = "cpu",
                max_memory=None, cache_dir=None, calls=None):
    """An onnxruntime engine directory (manifest already checked) -> OnnxRuntimeBackend.  Its session takes any
    batch, so there is nothing to compile per call (``cache_dir`` and ``calls`` do not apply)."""
    from ...adapters import image_channels
    from . import engine_batch_size

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CertsegError("ONNX Runtime is not installed; pip install 'certseg-rt[cpu]'")
    check_versions(manifest)
    batch = engine_batch_size(manifest, batch_size, max_memory=max_memory, costs=MEMORY if provider == "cpu" else None)
    fused, segmenter = graph_paths(engine_dir, manifest)
    session = make_session(fused, provider, threads)
    check_graph_matches(session, manifest, fused.name)
    inp = manifest["input"]
    backend = OnnxRuntimeBackend(session, sigma=manifest["sigma"], num_classes=len(manifest["classes"]),
                                 channels=inp["channels"], height=inp["height"], width=inp["width"],
                                 batch_size=batch, provider=provider)
    backend.fixed_batch = bool(manifest["batch_sizes"].get("fixed"))
    backend.segment = OnnxSegmenter(segmenter, image_channels(manifest))  # the image as given (no adapter)
    return backend
