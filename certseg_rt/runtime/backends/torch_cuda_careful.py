"""torch-cuda-careful: the certify a careful PyTorch GPU user writes, the baseline the GPU rows are measured against.

Nothing of this project's machinery, only what such a user would do (``TorchCudaCarefulBackend.sample_counts``):

* all samples of a call in one batch where device memory allows, else the fewest equal batches (the device batch
  policy of the fused form, ``fit_device_batch``; --max-memory is device memory);
* noise drawn on the device by ``torch.randn`` from a seeded ``torch.Generator`` (torch's CUDA Philox).  It is
  **not** the project's keyed noise: the generator is seeded per call from (seed, offset) by numpy's SeedSequence,
  so the selection (offset 0) and estimation (offset n0) draws are independent streams, and the record says the
  noise is torch's.  Certificates of this runner are valid ones; they do not equal the other backends' bit for bit;
* x + sigma * noise, then DenoiseSegment in IEEE fp32 or under torch.autocast (fp16, bf16), NCHW or channels_last,
  with cuDNN's autotuner on (``cudnn.benchmark``), as a careful user sets it for fixed shapes;
* argmax (in DenoiseSegment) and the per-class counts on the device; one host synchronisation per call (the copy of
  the counts and the largest label back).

``count_runs`` packs several images into a batch as a careful user evaluating a data set would (the runs with one
(first, num), ``torch_cuda_device.PackingLoop``): one noise draw per batch, added to every image of the pack (each
image sees the noise it would see alone at the same batch partition), the counts kept per image.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ...errors import CertsegError
from ..sampling import GraphBackend, equal_batches
from .torch_cuda import BATCH_RULE, describe_source
from .torch_cuda_device import (
    MAX_DEVICE_BATCH,
    CudaDevice,
    PackingLoop,
    check_bf16,
    fit_device_batch,
    memory_budget,
    model_precision,
    require_cuda,
)

PRECISIONS = ("fp32", "fp16", "bf16")
LAYOUTS = ("nchw", "channels_last")
NOISE = ("torch.randn on the device from a torch.Generator seeded per call by SeedSequence(seed, offset): torch's "
         "CUDA Philox, not the project's keyed noise")


def unavailable(**options) -> str | None:
    try:
        require_cuda(kernels=False)
    except CertsegError as e:
        return str(e).splitlines()[0]
    return None


def generator_seed(seed: int, offset: int) -> int:
    """The torch.Generator seed of the call (seed, offset): independent streams for n0 and n, reproducible."""
    words = [seed & 0xFFFFFFFF, seed >> 32, offset & 0xFFFFFFFF, offset >> 32]
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return (int(state[0]) | int(state[1]) << 32) & ((1 << 63) - 1)


class TorchCudaCarefulBackend(PackingLoop, GraphBackend):
    """The careful PyTorch GPU baseline (see the module docstring)."""

    name = "torch-cuda-careful"

    def __init__(self, model: torch.nn.Module, *, sigma: float, num_classes: int, channels: int,
                 size_multiple: int = 1, batch_size: int | None = None, precision: str = "fp32",
                 layout: str = "nchw", max_memory: int | None = None, device=None):
        if precision not in PRECISIONS or layout not in LAYOUTS:
            raise CertsegError(f"torch-cuda-careful precision {precision!r} / layout {layout!r}: choose one of "
                               f"{', '.join(PRECISIONS)} / {' or '.join(LAYOUTS)}")
        super().__init__(sigma=sigma, num_classes=num_classes, channels=channels, size_multiple=size_multiple,
                         batch_size=batch_size or MAX_DEVICE_BATCH)
        self.gpu = device if device is not None else CudaDevice(kernels=False)
        check_bf16(self.gpu, precision)
        self.precision, self.layout, self.requested_batch, self.max_memory = precision, layout, batch_size, max_memory
        self.memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        self.model = model.eval().to(self.gpu.device, memory_format=self.memory_format)
        self._shape: tuple[int, int, int] | None = None
        self.record = {"backend": self.name, "precision": precision, "layout": layout, **self.gpu.properties(),
                       "torch": torch.__version__, "tf32": False, "cudnn_benchmark": True, "noise": NOISE,
                       "batch_rule": BATCH_RULE}

    def _run_model(self, noisy: torch.Tensor, *, benchmark: bool = True) -> torch.Tensor:
        with model_precision(self.gpu.type, self.precision, benchmark=benchmark):
            return self.model(noisy.contiguous(memory_format=self.memory_format))

    def _prepare(self, shape: tuple[int, int, int]) -> None:
        if shape == self._shape:
            return
        io = 8 * int(np.prod(shape)) + 2 * shape[1] * shape[2]  # noise and noisy rows (float32), labels, a mask
        budget = memory_budget(self.gpu, self.max_memory)
        # probed without cuDNN's autotuner, whose trial workspaces would count as the model's memory
        probe = functools.partial(self._run_model, benchmark=False)
        self.batch_size, _ = fit_device_batch(self.gpu, probe, shape, budget, self.requested_batch, io)
        self._shape = shape
        self.record["max_batch"] = self.batch_size

    def _pack_counts(self, xs, num, seed, offset):
        """One pack (PackingLoop): at most batch_size images, one noise draw per batch added to each of them."""
        dev, images, (c, h, w) = self.gpu.device, len(xs), xs[0].shape
        rows, batches = equal_batches(num, self.batch_size // images)
        x = torch.from_numpy(np.stack(xs)).to(dev)
        generator = self.gpu.generator(generator_seed(seed, offset))
        counts = torch.zeros((images, self.num_classes, h, w), dtype=torch.int32, device=dev)
        top = torch.zeros((1,), dtype=torch.int32, device=dev)
        done = 0
        for _ in range(batches):
            m = min(rows, num - done)  # a careful user's last batch is just smaller
            noise = torch.randn((m, c, h, w), generator=generator, device=dev)
            noisy = (x[:, None] + self.sigma * noise[None]).reshape(images * m, c, h, w)
            labels = self._run_model(noisy).view(images, m, h, w)
            for k in range(self.num_classes):
                counts[:, k] += (labels == k).sum(1, dtype=torch.int32)
            top = torch.maximum(top, labels.amax().to(torch.int32).reshape(1))
            done += m
            if self.progress is not None:
                self.progress(m)
        host = torch.cat([top, counts.flatten()]).cpu().numpy()  # the call's one synchronisation
        if host[0] >= self.num_classes:
            raise CertsegError(f"label {host[0]} out of range for {self.num_classes} classes: the model's output does "
                               f"not match the class count it declares")
        self.record.update({"batch_size": images * rows, "packed_images": images})
        return list(host[1:].reshape(images, self.num_classes, h, w))


def open_model(model_dir, sigma: float, *, batch_size: int | None = None, precision: str = "fp32",
               layout: str = "nchw", denoiser: bool = True, threads: int | None = None, max_memory=None, device=None):
    """The reference registry's entry (REFERENCES["torch-cuda-careful"])."""
    from ...adapters import with_adapter
    from ...export.loaders import load_model_dir
    from ...runtime.memory import parse_memory

    if device is None:
        device = CudaDevice(kernels=False)  # refuses first, before the model is loaded
    source = load_model_dir(model_dir, denoiser=denoiser)
    backend = TorchCudaCarefulBackend(source.denoise_segment(sigma), sigma=sigma, num_classes=source.num_classes,
                                      channels=source.noise_channels, size_multiple=source.size_multiple,
                                      batch_size=batch_size, precision=precision, layout=layout,
                                      max_memory=None if max_memory is None else parse_memory(max_memory),
                                      device=device)
    describe_source(backend, source, sigma)
    return with_adapter(backend, source.adapter)

