"""ONNX Runtime backend: the fused graph x_noisy -> labels in a session, fed through IOBinding.

Buffers are bound once per batch size, so the sampling loop allocates nothing per batch.
CPU by default; CUDA and TensorRT execution providers are selectable when onnxruntime-gpu finds a GPU
(inputs still come from host memory here; device-resident sampling is the native TensorRT backend's job).
"""
from __future__ import annotations

import numpy as np

from ...errors import CertsegError
from ..sampling import GraphBackend

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

    def sample_counts(self, x, num, seed, offset):
        x = np.asarray(x)
        if x.ndim >= 2 and x.shape[-2:] != (self.height, self.width):
            raise CertsegError(f"image is {x.shape[-2]}x{x.shape[-1]} but the engine was built for "
                               f"{self.height}x{self.width}; resize the image or rebuild with "
                               f"`certseg-rt build-engine --image-size {x.shape[-2]}`")
        return super().sample_counts(x, num, seed, offset)
