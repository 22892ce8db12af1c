"""DenoiseSegment: x_noisy -> one-step DDPM x0 -> segmenter -> labels, as one torch module.

The same module is the torch reference backend's model and the graph exported to ONNX, so
what is certified by either path is the same computation.  Noise is *not* part of it: it is
an input, generated outside by the counter-based sampler, so every backend sees the same noise.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..diffusion import DENOISER_RANGE_SCALE, OneStepDenoise


class OneStepDenoiser(nn.Module):
    """x_noisy in [0, 1] -> denoised x in [0, 1] with one call of an epsilon-predicting UNet at t*."""

    def __init__(self, unet: nn.Module, step: OneStepDenoise):
        super().__init__()
        self.unet = unet
        self.step = step
        self.sqrt_abar = math.sqrt(step.alpha_bar)
        self.sqrt_one_minus_abar = math.sqrt(1.0 - step.alpha_bar)

    def forward(self, x_noisy: torch.Tensor) -> torch.Tensor:
        x_t = self.sqrt_abar * (DENOISER_RANGE_SCALE * x_noisy - 1.0)
        t = torch.full((x_noisy.shape[0],), self.step.timestep, dtype=torch.int64, device=x_noisy.device)
        eps_hat = self.unet(x_t, t, return_dict=False)[0]
        x0 = (x_t - self.sqrt_one_minus_abar * eps_hat) / self.sqrt_abar
        return (x0.clamp(-1.0, 1.0) + 1.0) / DENOISER_RANGE_SCALE


class DenoiseSegment(nn.Module):
    """x_noisy (B, C, H, W) float32 -> labels (B, H, W) uint8, or logits with ``output="logits"``.

    ``denoiser=None`` is plain randomized smoothing: the segmenter sees the noisy image.
    """

    def __init__(self, segmenter: nn.Module, denoiser: OneStepDenoiser | None, output: str = "labels"):
        super().__init__()
        if output not in ("labels", "logits"):
            raise ValueError(f"output must be 'labels' or 'logits', got {output!r}")
        self.segmenter = segmenter
        self.denoiser = denoiser
        self.output = output

    def forward(self, x_noisy: torch.Tensor) -> torch.Tensor:
        x = self.denoiser(x_noisy) if self.denoiser is not None else x_noisy
        logits = self.segmenter(x)
        if self.output == "logits":
            return logits
        # argmax returns the first maximal index, so ties go to the lowest class as in counting.
        return logits.argmax(dim=1).to(torch.uint8)
