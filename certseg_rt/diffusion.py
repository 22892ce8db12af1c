"""One-step DDPM denoising for randomized smoothing (Carlini et al., "(Certified!!) Adversarial
Robustness for Free!", 2023), as numbers: which timestep, which scale, which x0.

The smoothing noise is added in the segmenter's range [0, 1]: x_noisy = x + sigma * eps.  A DDPM
works in [-1, 1], where that noise has std 2 * sigma.  DDPM's forward process gives
x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps, so (2 * x_noisy - 1) scaled by sqrt(abar_t) is
a valid x_t exactly when sqrt((1 - abar_t) / abar_t) = 2 * sigma.  We take the timestep t* whose
ratio is closest.  The denoised image is diffusers' ``DDPMScheduler.step(...).pred_original_sample``
for the model's ``prediction_type`` (a = abar_t*, out = the model's output):

    epsilon       x0 = (x_t - sqrt(1 - a) * out) / sqrt(a)
    v_prediction  x0 = sqrt(a) * x_t - sqrt(1 - a) * out      (v = sqrt(a) eps - sqrt(1 - a) x0)
    sample        x0 = out

clipped to [-1, 1] (the data range; diffusers' ``clip_sample`` with ``clip_sample_range`` 1, which the
segmenter's [0, 1] input needs whatever the scheduler's setting: dynamic thresholding is a device of
multi-step sampling and is not applied) and mapped back to [0, 1].  Each is linear in (x_t, out), so
x0 = c_x * x_t + c_out * out (``OneStepDenoise.x0_coefficients``).  This module holds only the numbers
(numpy); the torch graph that applies them is ``certseg_rt.export.denoise_segment``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The denoiser's data range is [-1, 1]: twice as wide as the segmenter's [0, 1].
DENOISER_RANGE_SCALE = 2.0

# diffusers' DDPMScheduler prediction types, each with a closed-form x0.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class OneStepDenoise:
    sigma: float  # smoothing noise std in the segmenter's [0, 1] range
    timestep: int  # t*
    alpha_bar: float  # abar at t*
    prediction_type: str = "epsilon"  # what the model outputs: eps, v or x0 (diffusers' names)

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                             f"got {self.prediction_type!r}")

    @property
    def x_t_scale(self) -> float:
        """Factor from (2 * x_noisy - 1) to the DDPM's x_t."""
        return float(np.sqrt(self.alpha_bar))

    @property
    def x0_coefficients(self) -> tuple[float, float]:
        """(c_x, c_out) with x0 = c_x * x_t + c_out * out before clipping, for this prediction type."""
        a = self.alpha_bar
        if self.prediction_type == "epsilon":
            return float(1.0 / np.sqrt(a)), float(-np.sqrt(1.0 - a) / np.sqrt(a))
        if self.prediction_type == "v_prediction":
            return float(np.sqrt(a)), float(-np.sqrt(1.0 - a))
        return 0.0, 1.0  # sample: the model predicts x0 itself

    @property
    def mismatch(self) -> float:
        """Relative gap between the DDPM's noise level at t* and the smoothing noise."""
        ratio = np.sqrt((1.0 - self.alpha_bar) / self.alpha_bar)
        return float(abs(ratio - DENOISER_RANGE_SCALE * self.sigma) / (DENOISER_RANGE_SCALE * self.sigma))


def timestep_for_sigma(alphas_cumprod, sigma: float, prediction_type: str = "epsilon") -> OneStepDenoise:
    """t* with sqrt((1 - abar_t) / abar_t) closest to 2 * sigma, from a scheduler's ``alphas_cumprod``."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    ratio = np.sqrt((1.0 - abar) / abar)
    t = int(np.argmin(np.abs(ratio - DENOISER_RANGE_SCALE * sigma)))
    return OneStepDenoise(sigma=float(sigma), timestep=t, alpha_bar=float(abar[t]), prediction_type=prediction_type)


def x0_from_output(x_t: np.ndarray, output: np.ndarray, alpha_bar: float, prediction_type: str) -> np.ndarray:
    """DDPM's clean-image estimate from the model's output, clipped to [-1, 1] (numpy reference, diffusers'
    formulas written out)."""
    a = alpha_bar
    if prediction_type == "epsilon":
        x0 = (x_t - np.sqrt(1.0 - a) * output) / np.sqrt(a)
    elif prediction_type == "v_prediction":
        x0 = np.sqrt(a) * x_t - np.sqrt(1.0 - a) * output
    elif prediction_type == "sample":
        x0 = output
    else:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    return np.clip(x0, -1.0, 1.0)


def x0_from_eps(x_t: np.ndarray, eps_hat: np.ndarray, alpha_bar: float) -> np.ndarray:
    """DDPM's clean-image estimate from predicted noise, clipped to [-1, 1] (numpy reference)."""
    return x0_from_output(x_t, eps_hat, alpha_bar, "epsilon")
