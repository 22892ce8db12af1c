"""The PyTorch reference backend: DenoiseSegment in eager mode, batched, under inference_mode."""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..sampling import GraphBackend


class TorchEagerBackend(GraphBackend):
    name = "torch-eager"

    def __init__(self, model: torch.nn.Module, *, sigma: float, num_classes: int, channels: int,
                 size_multiple: int, batch_size: int = 16, threads: int | None = None, precision: str = "fp32"):
        super().__init__(sigma=sigma, num_classes=num_classes, channels=channels, size_multiple=size_multiple,
                         batch_size=batch_size)
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"torch precision {precision!r}: choose fp32 or bf16")
        self.model = model.eval()
        # bf16: torch's CPU autocast (oneDNN; AVX-512 BF16 / AMX where the CPU has them).  A model run this
        # way is a different base model and is certified as itself (the record says bf16).
        self.precision = precision
        if threads:
            torch.set_num_threads(threads)

    def infer(self, x_noisy: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.model(torch.from_numpy(x_noisy)).numpy()


def segment_clean(segmenter: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """The segmenter alone on a clean image (C, H, W) -> uint8 (H, W) labels, for the clean Dice."""
    with torch.inference_mode():
        logits = segmenter(torch.from_numpy(np.ascontiguousarray(image, np.float32)[None]))
    return logits.argmax(1)[0].numpy().astype(np.uint8)


def reference_backend(model_dir, sigma: float, *, batch_size: int = 16, denoiser: bool = True,
                      threads: int | None = None, precision: str = "fp32") -> TorchEagerBackend:
    """The torch reference backend for a model directory, with what it certifies recorded on it."""
    from ...adapters import with_adapter
    from ...export.loaders import load_model_dir
    from ...manifest import hash_files

    source = load_model_dir(model_dir, denoiser=denoiser)
    backend = TorchEagerBackend(source.denoise_segment(sigma), sigma=sigma, num_classes=source.num_classes,
                                channels=source.noise_channels, size_multiple=source.size_multiple,
                                batch_size=batch_size, threads=threads, precision=precision)
    step = source.one_step(sigma)
    backend.source = source
    backend.segment = functools.partial(segment_clean, source.segmenter)
    backend.input_size = (source.height, source.width)  # the resolution it was trained at
    backend.record = {
        "backend": backend.name,
        "precision": precision,
        "modality": source.modality,
        "denoiser": None if step is None else {"timestep": step.timestep, "alpha_bar": step.alpha_bar,
                                               **source.denoiser_spec.describe()},
        "model_files": hash_files(source.files),
        "torch": torch.__version__,
    }
    # A gray image in front of an RGB denoiser: replicated before the noise, as an engine does (adapters.py).
    return with_adapter(backend, source.adapter)
