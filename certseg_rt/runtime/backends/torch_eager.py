"""The PyTorch reference runner: DenoiseSegment in eager mode, batched, under inference_mode.

It runs a model directory, not an engine (``REFERENCES["torch-eager"]``).  What a careful PyTorch user
runs on a CPU is selectable, and certified as itself: fp32 or bf16 (CPU autocast through oneDNN: AVX-512
BF16 / AMX where the CPU has them; another base model), in NCHW or channels_last (NHWC) memory layout
(same numbers as NCHW up to summation order; oneDNN's convolutions prefer it).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..memory import MemoryCosts, default_memory_budget, fit_batch_size, parse_memory
from ..sampling import GraphBackend

PRECISIONS = ("fp32", "bf16")
LAYOUTS = ("nchw", "channels_last")
# Measured by benchmarks/memory_budget.py (peak RSS of certify at 512x512, batches 1 and 8: 660 and 1842 MB, 169 MB
# per sample against 105 MB of live tensors): eager torch frees each activation after its last use, and oneDNN's
# reorders and scratch add the rest; torch itself takes ~470 MB.
MEMORY = MemoryCosts(base_bytes=480 << 20, activation_factor=1.65)


def unavailable(**options) -> str | None:
    return None  # this module imports torch: if it loaded, it runs (on the CPU)


class TorchEagerBackend(GraphBackend):
    name = "torch-eager"

    def __init__(self, model: torch.nn.Module, *, sigma: float, num_classes: int, channels: int,
                 size_multiple: int, batch_size: int = 16, threads: int | None = None, precision: str = "fp32",
                 layout: str = "nchw"):
        super().__init__(sigma=sigma, num_classes=num_classes, channels=channels, size_multiple=size_multiple,
                         batch_size=batch_size)
        if precision not in PRECISIONS:
            raise ValueError(f"torch precision {precision!r}: choose {' or '.join(PRECISIONS)}")
        if layout not in LAYOUTS:
            raise ValueError(f"torch layout {layout!r}: choose {' or '.join(LAYOUTS)}")
        self.precision, self.layout = precision, layout
        self.memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        self.model = model.eval().to(memory_format=self.memory_format)
        if threads:
            torch.set_num_threads(threads)
        self.memory: dict | None = None  # set by open_model: what fitting the batch to a budget needs

    def fit_batch(self, height: int, width: int) -> int:
        """The batch for images of this size under the budget: torch takes any size, and its activations grow
        with the pixels, so the batch is fitted per image size (the engine runners fit theirs once)."""
        if self.memory is not None and self.memory.get("pixels") != height * width:
            m = self.memory
            scale = height * width / (m["height"] * m["width"])
            estimate = MEMORY.estimate({
                "memory": {"activation_bytes_per_sample": m["activation_bytes"] * scale,
                           "weights_bytes": m["weights_bytes"]},
                "input": {"channels": self.channels, "height": height, "width": width},
                "classes": list(range(self.num_classes))})
            self.batch_size = fit_batch_size(estimate, m["budget"], 1, m["requested"])
            m["pixels"] = height * width
            self.record["batch_size"] = self.batch_size
        return self.batch_size

    def check_image(self, x):
        x = np.asarray(x)
        if x.ndim >= 2:
            self.fit_batch(*x.shape[-2:])
        return super().check_image(x)

    def infer(self, x_noisy: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(x_noisy).contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return np.ascontiguousarray(self.model(x).numpy())


def segment_clean(segmenter: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """The segmenter alone on a clean image (C, H, W) -> uint8 (H, W) labels, for the clean Dice."""
    with torch.inference_mode():
        logits = segmenter(torch.from_numpy(np.ascontiguousarray(image, np.float32)[None]))
    return logits.argmax(1)[0].numpy().astype(np.uint8)


def open_model(model_dir, sigma: float, *, batch_size: int = 16, denoiser: bool = True, threads: int | None = None,
               precision: str = "fp32", layout: str = "nchw", max_memory: int | None = None):
    """The torch reference backend for a model directory, with what it certifies recorded on it.

    The batch is ``batch_size``, lowered to fit ``max_memory`` (bytes or e.g. "2G"; default: half the memory
    available now).  A gray image in front of an RGB denoiser is replicated before the noise, as an engine
    does (adapters.py)."""
    from ...adapters import with_adapter
    from ...export.loaders import load_model_dir
    from ...export.memory import peak_activation_bytes
    from ...manifest import hash_files

    if precision not in PRECISIONS or layout not in LAYOUTS:
        raise ValueError(f"torch precision {precision!r} / layout {layout!r}: choose {' or '.join(PRECISIONS)} / "
                         f"{' or '.join(LAYOUTS)}")
    source = load_model_dir(model_dir, denoiser=denoiser)
    model = source.denoise_segment(sigma)
    channels = source.noise_channels
    activations = peak_activation_bytes(model, torch.rand(1, channels, source.height, source.width))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = default_memory_budget() if max_memory is None else parse_memory(max_memory)
    backend = TorchEagerBackend(model, sigma=sigma, num_classes=source.num_classes, channels=channels,
                                size_multiple=source.size_multiple, batch_size=batch_size, threads=threads,
                                precision=precision, layout=layout)
    backend.memory = {"activation_bytes": activations, "weights_bytes": weights, "height": source.height,
                      "width": source.width, "budget": budget, "requested": batch_size}
    step = source.one_step(sigma)
    backend.source = source
    backend.segment = functools.partial(segment_clean, source.segmenter)
    backend.input_size = (source.height, source.width)  # the resolution it was trained at
    backend.record = {
        "backend": backend.name,
        "precision": precision,
        "layout": layout,
        "batch_size": batch_size,
        "modality": source.modality,
        "denoiser": None if step is None else {"timestep": step.timestep, "alpha_bar": step.alpha_bar,
                                               **source.denoiser_spec.describe()},
        "model_files": hash_files(source.files),
        "torch": torch.__version__,
    }
    backend.fit_batch(source.height, source.width)  # refuses, in one line, a budget too small for one sample
    return with_adapter(backend, source.adapter)
