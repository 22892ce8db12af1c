"""CUDA through cuda-python for the device-resident runners (TensorRT, ONNX Runtime's CUDA / TensorRT providers):
the runtime module, error unwrapping, device buffers, and the on-device sampling loop's buffers and stream
(noise kernel -> the runner's inference -> vote kernel, counts copied back once per call).

cuda-python (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6) is imported only when used; why this binding
is said in ``tensorrt.py``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ...errors import CertsegError


def cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` in cuda-python < 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise CertsegError("the TensorRT backend needs cuda-python for device memory and CUDA graphs "
                               "(pip install 'certseg-rt[gpu]')")
    return runtime


def cuda_ok(result, what: str):
    """Unwrap cuda-python's (cudaError_t, *values) return; raise CertsegError naming the call on failure."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        message = rt.cudaGetErrorString(err)
        message = message[1] if isinstance(message, tuple) else message
        message = message.decode() if isinstance(message, bytes) else str(message)
        raise CertsegError(f"CUDA call {what} failed: {message}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def require_device_kernels():
    """The compiled extension with CUDA kernels, and a GPU; else one CertsegError line."""
    from ..._ext_loader import EXTENSION_STATUS, ext

    if not EXTENSION_STATUS["cuda"]:
        raise CertsegError("the TensorRT backend needs certseg-rt's CUDA kernels, and this install was built without "
                           "them; reinstall on a machine with nvcc (CERTSEG_CUDA=ON pip install 'certseg-rt[gpu]')")
    if ext.cuda_device_count() == 0:
        raise CertsegError("no CUDA device is visible (driver missing, no GPU, or CUDA_VISIBLE_DEVICES is empty); "
                           "the TensorRT backend runs on an NVIDIA GPU")
    return ext


def gpu_properties(device: int | None = None) -> tuple[str, str]:
    """(name, compute capability "major.minor") of the current (or given) CUDA device, via cuda-python."""
    rt = cudart()
    device = cuda_ok(rt.cudaGetDevice(), "cudaGetDevice") if device is None else device
    prop = cuda_ok(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name.split("\x00")[0].strip(), f"{prop.major}.{prop.minor}"


class ClosesDeviceResources:
    """Context manager over close(): device memory, graphs and contexts are freed on exit or collection."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class DeviceBuffer:
    """cudaMalloc'd bytes, freed by ``free()`` (idempotent)."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = int(cuda_ok(cudart().cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))

    def free(self) -> None:
        if self.ptr:
            cudart().cudaFree(self.ptr)
            self.ptr = 0


class DeviceLoop:
    """Buffers and stream of the on-device sampling loop (x, noisy batch, labels, counts, bad label)."""

    def __init__(self, *, channels, height, width, num_classes, batch_size, stream=None):
        from ..._ext_loader import ext

        self.ext = ext
        rt = cudart()
        self.shape = (channels, height, width)
        self.elements = channels * height * width
        self.pixels = height * width
        self.num_classes = num_classes
        self.batch_size = batch_size
        self._own_stream = stream is None
        if stream is None:
            flags = getattr(rt, "cudaStreamNonBlocking", 1)
            stream = cuda_ok(rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")
        self.stream = stream
        self.handle = int(stream)
        self.buffers: list[DeviceBuffer] = []
        self.x = self._alloc(self.elements * 4)
        self.noisy = self._alloc(batch_size * self.elements * 4)
        self.labels = self._alloc(batch_size * self.pixels)
        self.counts = self._alloc(num_classes * self.pixels * 4)
        self.bad = self._alloc(4)
        self._host_counts = np.empty((num_classes, height, width), np.int32)
        self._host_bad = np.empty(1, np.int32)

    def _alloc(self, nbytes):
        buf = DeviceBuffer(nbytes)
        self.buffers.append(buf)
        return buf

    def copy_in(self, dst: int, array: np.ndarray) -> None:
        rt = cudart()
        cuda_ok(rt.cudaMemcpyAsync(dst, array.ctypes.data, array.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                   self.stream), "cudaMemcpyAsync (host to device)")

    def copy_out(self, array: np.ndarray, src: int) -> None:
        rt = cudart()
        cuda_ok(rt.cudaMemcpyAsync(array.ctypes.data, src, array.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                   self.stream), "cudaMemcpyAsync (device to host)")

    def synchronize(self) -> None:
        cuda_ok(cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def fill(self, seed: int, first_sample: int, batch: int, sigma: float) -> None:
        self.ext.cuda_fill_noisy(self.x.ptr, self.elements, sigma, seed, first_sample, batch, self.noisy.ptr,
                                 stream=self.handle)

    def votes(self, batch: int) -> None:
        self.ext.cuda_accumulate_votes(self.labels.ptr, batch, self.pixels, self.counts.ptr, self.num_classes,
                                       self.bad.ptr, stream=self.handle)

    def run(self, x: np.ndarray, num: int, seed: int, offset: int, sigma: float,
            infer: Callable[[int], bool], progress: Callable[[int], None] | None) -> np.ndarray:
        """counts (K, H, W) of `num` samples from `offset`; infer(b) enqueues b samples, True if it also voted."""
        rt = cudart()
        self.copy_in(self.x.ptr, np.ascontiguousarray(x, np.float32))
        cuda_ok(rt.cudaMemsetAsync(self.counts.ptr, 0, self.counts.nbytes, self.stream), "cudaMemsetAsync")
        cuda_ok(rt.cudaMemsetAsync(self.bad.ptr, 0xFF, 4, self.stream), "cudaMemsetAsync")
        for start in range(0, num, self.batch_size):
            b = min(self.batch_size, num - start)
            self.fill(seed, offset + start, b, sigma)
            if not infer(b):
                self.votes(b)
            if progress is not None:
                progress(b)  # enqueued, not finished: the GPU catches up at the copy below
        self.copy_out(self._host_counts, self.counts.ptr)
        self.copy_out(self._host_bad, self.bad.ptr)
        self.synchronize()
        if self._host_bad[0] >= 0:
            raise CertsegError(f"the engine produced label {int(self._host_bad[0])}, out of range for "
                               f"{self.num_classes} classes: the model does not match the classes it declares; "
                               f"rebuild the engine")
        return self._host_counts.copy()

    def close(self) -> None:
        for buf in self.buffers:
            buf.free()
        self.buffers = []
        if self._own_stream and self.stream is not None:
            cudart().cudaStreamDestroy(self.stream)
        self.stream = None
