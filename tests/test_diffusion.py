"""One-step denoising equals diffusers' DDPMScheduler formula; t* matches the noise level."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from certseg_rt.diffusion import timestep_for_sigma, x0_from_eps  # noqa: E402
from certseg_rt.export.denoise_segment import OneStepDenoiser  # noqa: E402


class FixedEps(torch.nn.Module):
    """Stands in for the UNet so that the formula around it can be compared with diffusers'."""

    def __init__(self, eps):
        super().__init__()
        self.eps = eps
        self.seen = None

    def forward(self, x_t, t, return_dict=False):
        self.seen = (x_t.clone(), t.clone())
        return (self.eps,)


@pytest.fixture(scope="module")
def scheduler():
    return diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                   beta_end=0.02, clip_sample=True, prediction_type="epsilon")


# t* pinned, for the bundled (linear) schedule and a cosine one.  The numbers were computed from the schedules'
# definitions in plain Python (the functions below; no diffusers, no certseg_rt), and each test recomputes them that
# way too, so that neither a change to the implementation nor to the pins can pass unnoticed:
#   linear (Ho et al. 2020; the bundled denoisers): beta_i = 1e-4 + (0.02 - 1e-4) * i / 999, abar_t = prod_{i<=t} (1 - beta_i)
#   cosine (Nichol & Dhariwal 2021; diffusers' "squaredcos_cap_v2"): f(u) = cos((u + 0.008) / 1.008 * pi / 2)**2,
#           beta_t = min(1 - f((t + 1) / T) / f(t / T), 0.999), abar_t = prod_{i<=t} (1 - beta_i)
#   t* = argmin_t |sqrt((1 - abar_t) / abar_t) - 2 sigma|  (README: 144, 258, 396 at sigma 0.25, 0.5, 1.0)
T_STAR = {"linear": {0.12: 70, 0.25: 144, 0.5: 258, 1.0: 396}, "cosine": {0.12: 142, 0.25: 289, 0.5: 495, 1.0: 701}}


def _linear_abar(steps=1000):
    abar, a = [], 1.0
    for i in range(steps):
        a *= 1.0 - (1e-4 + (0.02 - 1e-4) * i / (steps - 1))
        abar.append(a)
    return abar


def _cosine_abar(steps=1000):
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar, a = [], 1.0
    for t in range(steps):
        a *= 1.0 - min(1.0 - f((t + 1) / steps) / f(t / steps), 0.999)
        abar.append(a)
    return abar


SCHEDULES = {"linear": _linear_abar, "cosine": _cosine_abar}


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_t_star_from_the_schedule_definitions_is_pinned(schedule):
    abar = SCHEDULES[schedule]()
    for sigma, pinned in T_STAR[schedule].items():
        by_hand = min(range(len(abar)), key=lambda t: abs(math.sqrt((1 - abar[t]) / abar[t]) - 2 * sigma))
        assert by_hand == pinned, (schedule, sigma)
        step = timestep_for_sigma(abar, sigma)
        assert step.timestep == pinned and step.alpha_bar == abar[pinned] and step.sigma == sigma
        assert step.mismatch < 0.02  # the 1000-step schedules are fine enough near these sigmas


@pytest.mark.parametrize("schedule, config", [("linear", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
                                              ("cosine", dict(beta_schedule="squaredcos_cap_v2"))])
def test_t_star_of_diffusers_schedulers_is_pinned(schedule, config):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, **config)
    for sigma, pinned in T_STAR[schedule].items():
        assert timestep_for_sigma(scheduler.alphas_cumprod.numpy(), sigma).timestep == pinned, (schedule, sigma)


@pytest.mark.parametrize("model", ["chest", "skin", "polyp"])
def test_t_star_of_the_bundled_denoisers_is_readmes(model):
    from certseg_rt.zoo import bundled_model_dir

    scheduler = diffusers.DDPMScheduler.from_pretrained(bundled_model_dir(model) / "denoiser" / "scheduler")
    got = {sigma: timestep_for_sigma(scheduler.alphas_cumprod.numpy(), sigma).timestep for sigma in (0.25, 0.5, 1.0)}
    assert got == {0.25: 144, 0.5: 258, 1.0: 396}


def test_t_star_is_chosen_in_double_precision():
    """diffusers keeps alphas_cumprod in float32; the choice of t* is made in float64 whatever the input's dtype.
    Two float32 abar either side of 0.8 (ratio 0.5 = 2 * 0.25): float64 finds the second closer, float32
    arithmetic would pick the first."""
    abar = np.array([0.7999977, 0.8000023], np.float32)
    ratios = np.sqrt((1 - abar.astype(np.float64)) / abar.astype(np.float64))
    assert np.argmin(np.abs(ratios - 0.5)) == 1
    assert timestep_for_sigma(abar, 0.25).timestep == 1


@pytest.mark.parametrize("sigma", [0.25, 0.5])
def test_one_step_equals_diffusers_pred_original_sample(scheduler, sigma):
    g = torch.Generator().manual_seed(0)
    x_noisy = torch.rand(3, 1, 16, 16, generator=g) * 1.6 - 0.3  # noisy images leave [0, 1]
    eps_hat = torch.randn(3, 1, 16, 16, generator=g)
    step = timestep_for_sigma(scheduler.alphas_cumprod.numpy(), sigma)
    unet = FixedEps(eps_hat)
    ours = OneStepDenoiser(unet, step)(x_noisy)

    x_t, t = unet.seen
    assert torch.all(t == step.timestep)
    torch.testing.assert_close(x_t, np.sqrt(step.alpha_bar) * (2 * x_noisy - 1))
    ref = scheduler.step(eps_hat, step.timestep, x_t, generator=g).pred_original_sample
    torch.testing.assert_close(ours, (ref + 1) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x0_from_eps(x_t.numpy(), eps_hat.numpy(), step.alpha_bar),
                               ref.numpy(), rtol=1e-5, atol=1e-6)
    assert ours.min() >= 0 and ours.max() <= 1


def test_sigma_must_be_positive():
    with pytest.raises(ValueError, match="sigma"):
        timestep_for_sigma(np.linspace(0.999, 0.01, 10), 0.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_of_each_prediction_type_equals_diffusers_pred_original_sample(prediction_type):
    """x0_from_output and the coefficients the exported graph uses, against DDPMScheduler.step for that
    prediction type (clip_sample to [-1, 1]); inputs wide enough that clipping acts on some elements."""
    import torch
    from diffusers import DDPMScheduler

    from certseg_rt.diffusion import x0_from_output

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=True,
                              clip_sample_range=1.0)
    step = timestep_for_sigma(scheduler.alphas_cumprod.numpy(), 0.25, prediction_type)
    assert step.prediction_type == prediction_type
    rng = np.random.default_rng(3)
    x_t = rng.uniform(-1.5, 1.5, (2, 3, 8, 8)).astype(np.float32)
    out = rng.normal(0, 1.2, x_t.shape).astype(np.float32)
    want = scheduler.step(torch.from_numpy(out), step.timestep, torch.from_numpy(x_t)).pred_original_sample.numpy()
    assert 0.01 < np.mean(np.abs(want) == 1.0) < 0.9  # clipping matters here
    got = x0_from_output(x_t.astype(np.float64), out.astype(np.float64), step.alpha_bar, prediction_type)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    c_x, c_out = step.x0_coefficients
    np.testing.assert_allclose(np.clip(c_x * x_t + c_out * out, -1, 1), want, rtol=0, atol=2e-6)


def test_an_unknown_prediction_type_is_refused_naming_the_known_ones():
    from certseg_rt.diffusion import OneStepDenoise, x0_from_output

    message = "prediction_type must be one of epsilon, v_prediction, sample, got 'eps'"
    with pytest.raises(ValueError) as error:
        x0_from_output(np.zeros(2), np.zeros(2), 0.5, "eps")
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        OneStepDenoise(sigma=0.25, timestep=10, alpha_bar=0.9, prediction_type="eps")
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        timestep_for_sigma(np.linspace(0.99, 0.01, 100), 0.25, "eps")
    assert str(error.value) == message
