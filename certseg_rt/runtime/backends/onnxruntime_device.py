"""ONNX Runtime's CUDA / TensorRT execution providers with noise, labels and votes in device memory (the on-device
sampling loop of ``cuda_device.DeviceLoop`` around an ONNX Runtime session)."""
from __future__ import annotations

import numpy as np

from ...errors import CertsegError
from ..sampling import check_input
from .cuda_device import ClosesDeviceResources, DeviceLoop, require_device_kernels
from .onnxruntime import OnnxRuntimeBackend


class OnnxRuntimeDeviceBackend(ClosesDeviceResources, OnnxRuntimeBackend):
    """ONNX Runtime (CUDA or TensorRT EP) with noise, labels and votes in device memory.

    ONNX Runtime runs on our stream (provider option ``user_compute_stream``) and does not synchronize
    after each run (``disable_synchronize_execution_providers``), so the noise kernel, the session and
    the votes kernel are ordered by the stream alone; IOBinding binds the noisy batch and the labels in
    place.  ``infer`` (host arrays) is the parent's.
    """

    name = "onnxruntime"

    def __init__(self, path, *, provider: str, sigma, num_classes, channels, height, width, batch_size,
                 threads: int | None = None, device_id: int = 0):
        import onnxruntime as ort

        from .onnxruntime import PROVIDERS

        if provider not in ("cuda", "tensorrt"):
            raise CertsegError(f"device-resident ONNX Runtime needs provider cuda or tensorrt, got {provider!r}")
        require_device_kernels()
        available = ort.get_available_providers()
        if PROVIDERS[provider] not in available:
            raise CertsegError(f"ONNX Runtime here has no {PROVIDERS[provider]} (available: {', '.join(available)}); "
                               f"install onnxruntime-gpu on a machine with an NVIDIA GPU")
        loop = DeviceLoop(channels=channels, height=height, width=width, num_classes=num_classes,
                           batch_size=batch_size)
        options = {"device_id": str(device_id), "user_compute_stream": str(loop.handle)}
        providers = [(PROVIDERS[provider], options)]
        if provider == "tensorrt":
            providers.append(("CUDAExecutionProvider", dict(options)))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:
            loop.close()
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CertsegError(f"cannot load {path} with ONNX Runtime {provider} ({first[:200]}); rebuild with "
                               f"`certseg-rt build-engine`")
        super().__init__(session, sigma=sigma, num_classes=num_classes, channels=channels, height=height,
                         width=width, batch_size=batch_size, provider=provider)
        self.device_id = device_id
        self._loop = loop
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self._device_bindings: dict[int, object] = {}

    def _device_binding(self, batch: int):
        binding = self._device_bindings.get(batch)
        if binding is None:
            c, h, w = self._loop.shape
            binding = self.session.io_binding()
            binding.bind_input(self.input_name, "cuda", self.device_id, np.float32, (batch, c, h, w),
                               self._loop.noisy.ptr)
            binding.bind_output(self.output_name, "cuda", self.device_id, np.uint8, (batch, h, w),
                                self._loop.labels.ptr)
            self._device_bindings[batch] = binding
        return binding

    def _run_batch(self, batch: int) -> bool:
        self.session.run_with_iobinding(self._device_binding(batch), self._run_options)
        return False

    def sample_counts(self, x, num, seed, offset):
        x = np.asarray(x)
        if x.ndim >= 2 and x.shape[-2:] != (self.height, self.width):
            return super().sample_counts(x, num, seed, offset)  # the parent's one-line size error
        x = check_input(x, self.channels)
        return self._loop.run(x, num, seed, offset, self.sigma, self._run_batch, self.progress)

    def close(self) -> None:
        self._device_bindings = {}
        if getattr(self, "_loop", None) is not None:
            self._loop.close()
            self._loop = None
