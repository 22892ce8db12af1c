"""DenoiseSegment: x_noisy -> one-step DDPM x0 -> segmenter -> labels, as one torch module.

The same module is the torch reference backend's model and the graph exported to ONNX, so
what is certified by either path is the same computation.  Noise is *not* part of it: it is
an input, generated outside by the counter-based sampler, so every backend sees the same noise.
"""
from __future__ import annotations

import torch
from torch import nn

from ..diffusion import DENOISER_RANGE_SCALE, OneStepDenoise


class OneStepDenoiser(nn.Module):
    """x_noisy in [0, 1] -> denoised x in [0, 1] with one call of a DDPM UNet at t*.

    The UNet's output is eps, v or x0 (``step.prediction_type``); of a UNet with learned variance
    (2C output channels) only the first C are that output, the rest (the variance) is dropped.
    ``average_channels`` in front of a grayscale segmenter (the noise space replicates the gray image
    into the UNet's channels, ``certseg_rt.adapters``): the output is the mean over channels, the
    pseudo-inverse of the replication, so the graph gives what the segmenter takes.
    """

    def __init__(self, unet: nn.Module, step: OneStepDenoise, average_channels: bool = False):
        super().__init__()
        self.unet = unet
        self.step = step
        self.x_t_scale = step.x_t_scale
        self.c_x, self.c_out = step.x0_coefficients
        self.average_channels = average_channels

    def forward(self, x_noisy: torch.Tensor) -> torch.Tensor:
        x_t = self.x_t_scale * (DENOISER_RANGE_SCALE * x_noisy - 1.0)
        t = torch.full((x_noisy.shape[0],), self.step.timestep, dtype=torch.int64, device=x_noisy.device)
        out = self.unet(x_t, t, return_dict=False)[0][:, :x_noisy.shape[1]]  # learned variance: drop the rest
        x0 = self.c_x * x_t + self.c_out * out
        x = (x0.clamp(-1.0, 1.0) + 1.0) / DENOISER_RANGE_SCALE
        return x.mean(dim=1, keepdim=True) if self.average_channels else x


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
