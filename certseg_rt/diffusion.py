"""One-step DDPM denoising for randomized smoothing (Carlini et al., "(Certified!!) Adversarial
Robustness for Free!", 2023), as numbers: which timestep, which scale.

The smoothing noise is added in the segmenter's range [0, 1]: x_noisy = x + sigma * eps.  A DDPM
works in [-1, 1], where that noise has std 2 * sigma.  DDPM's forward process gives
x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps, so (2 * x_noisy - 1) scaled by sqrt(abar_t) is
a valid x_t exactly when sqrt((1 - abar_t) / abar_t) = 2 * sigma.  We take the timestep t* whose
ratio is closest.  The denoised image is diffusers' ``pred_original_sample`` for epsilon
prediction, x0 = (x_t - sqrt(1 - abar_t) * eps_hat) / sqrt(abar_t), clipped to [-1, 1] and mapped
back to [0, 1].  This module holds only the numbers (numpy); the torch graph that applies them
is ``certseg_rt.export.denoise_segment``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The denoiser's data range is [-1, 1]: twice as wide as the segmenter's [0, 1].
DENOISER_RANGE_SCALE = 2.0


@dataclass(frozen=True)
class OneStepDenoise:
    sigma: float  # smoothing noise std in the segmenter's [0, 1] range
    timestep: int  # t*
    alpha_bar: float  # abar at t*

    @property
    def x_t_scale(self) -> float:
        """Factor from (2 * x_noisy - 1) to the DDPM's x_t."""
        return float(np.sqrt(self.alpha_bar))

    @property
    def mismatch(self) -> float:
        """Relative gap between the DDPM's noise level at t* and the smoothing noise."""
        ratio = np.sqrt((1.0 - self.alpha_bar) / self.alpha_bar)
        return float(abs(ratio - DENOISER_RANGE_SCALE * self.sigma) / (DENOISER_RANGE_SCALE * self.sigma))


def timestep_for_sigma(alphas_cumprod, sigma: float) -> OneStepDenoise:
    """t* with sqrt((1 - abar_t) / abar_t) closest to 2 * sigma, from a scheduler's ``alphas_cumprod``."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    ratio = np.sqrt((1.0 - abar) / abar)
    t = int(np.argmin(np.abs(ratio - DENOISER_RANGE_SCALE * sigma)))
    return OneStepDenoise(sigma=float(sigma), timestep=t, alpha_bar=float(abar[t]))


def x0_from_eps(x_t: np.ndarray, eps_hat: np.ndarray, alpha_bar: float) -> np.ndarray:
    """DDPM's clean-image estimate from predicted noise, clipped to [-1, 1] (numpy reference)."""
    x0 = (x_t - np.sqrt(1.0 - alpha_bar) * eps_hat) / np.sqrt(alpha_bar)
    return np.clip(x0, -1.0, 1.0)
