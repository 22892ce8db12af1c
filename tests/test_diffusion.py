"""One-step denoising equals diffusers' DDPMScheduler formula; t* matches the noise level."""
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


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_timestep_matches_noise_level(scheduler, sigma):
    abar = scheduler.alphas_cumprod.double().numpy()
    step = timestep_for_sigma(abar, sigma)
    ratio = np.sqrt((1 - abar) / abar)
    assert np.abs(ratio - 2 * sigma).argmin() == step.timestep
    assert step.alpha_bar == abar[step.timestep]
    assert step.mismatch < 0.02  # the 1000-step schedule is fine enough near these sigmas


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
