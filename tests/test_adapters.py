"""Input adapters: a gray image replicated into an RGB denoiser's channels.  The radius conversion by the
replication's spectral norm (alone and composed with a resize), which adapter the channel counts call for,
the manifest field, and the noise being added after the replication."""
import math

import numpy as np
import pytest

from certseg_rt import kernels, stats
from certseg_rt.adapters import Replicate, ReplicatedInput, adapter_for, adapter_from_manifest, image_channels
from certseg_rt.errors import CertsegError, InputError
from certseg_rt.resize import _resize_plane, fit_to_model
from certseg_rt.runtime.sampling import GraphBackend

SQRT3 = math.sqrt(3.0)


def _power_iteration(apply, adjoint, shape, rng, steps=100):
    v = rng.standard_normal(shape)
    for _ in range(steps):
        v = adjoint(apply(v))
        v /= np.linalg.norm(v)
    return float(np.linalg.norm(apply(v)))


def test_replication_norm_is_sqrt3_for_every_perturbation():
    rep = Replicate(1, 3)
    assert rep.operator_norm == SQRT3
    rng = np.random.default_rng(0)
    for _ in range(20):  # A^T A = 3 I: every perturbation is stretched by exactly sqrt(3)
        d = rng.standard_normal((1, 17, 9))
        assert np.linalg.norm(rep.image(d)) == pytest.approx(SQRT3 * np.linalg.norm(d), rel=1e-12)
    attained = _power_iteration(rep.image, lambda y: y.sum(axis=0, keepdims=True), (1, 17, 9), rng)
    assert attained == pytest.approx(SQRT3, rel=1e-12)


@pytest.mark.parametrize("shape", [(200, 160), (100, 128)])
def test_resize_then_replication_norms_multiply(shape):
    """A = 1_3 (x) S: |A|_2 = sqrt(3) |S|_2 (Kronecker product), checked through the maps themselves."""
    fit = fit_to_model(np.zeros((1, *shape), np.float32), (128, 128), Replicate(1, 3))
    assert fit.operator_norm == pytest.approx(SQRT3 * fit.resize_operator_norm, rel=1e-12)
    rows = _resize_plane(np.eye(shape[0], dtype=np.float32), (shape[0], 128)).T.astype(np.float64)  # (128, H)
    cols = _resize_plane(np.eye(shape[1], dtype=np.float32), (shape[1], 128)).T.astype(np.float64)  # (128, W)
    apply = lambda d: Replicate(1, 3).image(np.stack([_resize_plane(c.astype(np.float32), (128, 128)) for c in d])
                                            .astype(np.float64))
    adjoint = lambda y: (rows.T @ y.sum(axis=0) @ cols)[None]
    rng = np.random.default_rng(sum(shape))
    for _ in range(10):  # |A d| <= |A| |d|: the radius R / |A| is safe in the gray image
        d = rng.standard_normal((1, *shape))
        assert np.linalg.norm(apply(d)) <= fit.operator_norm * np.linalg.norm(d) * (1 + 1e-4)
    attained = _power_iteration(apply, adjoint, (1, *shape), rng, steps=120)  # ...and not loose
    assert fit.operator_norm * 0.99 <= attained <= fit.operator_norm * (1 + 1e-4)
    assert fit.radius_at_input(0.3) == pytest.approx(0.3 / (SQRT3 * fit.resize_operator_norm))
    assert fit.describe()["adapter"]["operator_norm"] == SQRT3


def test_same_size_with_replication_still_converts_the_radius():
    fit = fit_to_model(np.zeros((1, 32, 32), np.float32), (32, 32), Replicate(1, 3))
    assert not fit.resized and fit.radius_at_input(0.1686) == pytest.approx(0.1686 / SQRT3)
    assert fit_to_model(np.zeros((1, 32, 32)), (32, 32)).radius_at_input(0.1686) == 0.1686


def test_converted_radius_is_the_exact_distance_for_a_channel_mean_threshold():
    """Monte Carlo with the project's noise: base model f(z) = [mean over channels of z > 0] on one pixel,
    gray value x = 0.1, noise sigma in the 3-channel space.  The smoothed model's certified radius R in the
    noise space divided by sqrt(3) is the true distance of x to the boundary in the gray image (0.1): the
    conversion is sound and tight; dividing by 1 or by 3 would be off by far more than the sampling error."""
    x, sigma, n = 0.1, 0.25, 400_000
    eps = kernels.gaussian_noise(seed=5, first_sample=0, num_samples=n, elements=3)
    noisy = Replicate(1, 3).image(np.full((1, 1), x, np.float32)).reshape(1, 3) + np.float32(sigma) * eps
    p = float(np.mean(noisy.mean(axis=1) > 0))
    radius = stats.certified_radius(sigma, p)  # sigma * Phi^-1(p), p the smoothed model's probability
    assert radius / SQRT3 == pytest.approx(x, abs=0.003)
    assert abs(radius - x) > 0.05 and abs(radius / 3 - x) > 0.03


@pytest.mark.parametrize("counts, expected", [((1, 1, 1), None), ((3, 3, 3), None), ((1, None, 1), None),
                                              ((3, None, 3), None), ((1, 3, 1), Replicate(1, 3)),
                                              ((1, 3, None), Replicate(1, 3))])
def test_adapter_for_the_channel_counts(counts, expected):
    assert adapter_for(*counts) == expected


@pytest.mark.parametrize("counts, needle", [
    ((3, 1, 3), "the images have 3 channel(s), the denoiser takes 1, the segmenter takes 3; give a denoiser with 3"),
    ((1, 3, 3), "the images have 1 channel(s), the denoiser takes 3, the segmenter takes 3; the images must have"),
    ((1, 4, 1), "the denoiser takes 4, the segmenter takes 1"),
    ((1, None, 3), "the denoiser takes none (no denoiser), the segmenter takes 3"),
    ((3, 3, 1), "the images have 3 channel(s), the denoiser takes 3, the segmenter takes 1"),
])
def test_channel_counts_that_do_not_fit_are_one_line_naming_all_three(counts, needle):
    with pytest.raises(CertsegError) as e:
        adapter_for(*counts)
    assert needle in str(e.value) and "\n" not in str(e.value)


def _manifest(adapter, channels=3):
    return {"input": {"channels": channels, "height": 8, "width": 8}, "adapter": adapter}


def test_manifest_field_round_trips_and_is_checked():
    field = Replicate(1, 3).describe()
    assert field == {"kind": "replicate", "image_channels": 1, "channels": 3, "operator_norm": 1.7320508075688772}
    assert adapter_from_manifest(_manifest(field)) == Replicate(1, 3)
    assert image_channels(_manifest(field)) == 1 and image_channels(_manifest(None, 3)) == 3
    assert adapter_from_manifest({"input": {"channels": 1}}) is None
    for bad, needle in [({**field, "kind": "resize"}, "kind replicate"), ({**field, "channels": 1}, "channels >= 2"),
                        ({**field, "image_channels": True}, "image_channels 1"),
                        ({**field, "operator_norm": 3.0}, "operator_norm is 3.0"), ("replicate", "an object")]:
        with pytest.raises(CertsegError, match="engine field adapter") as e:
            adapter_from_manifest(_manifest(bad))
        assert needle in str(e.value)
    with pytest.raises(CertsegError, match="input.channels is 4"):
        adapter_from_manifest(_manifest(field, channels=4))


class RecordingBackend(GraphBackend):
    """A 3-channel graph backend whose 'model' labels each pixel by its first channel and keeps its inputs."""

    def __init__(self):
        super().__init__(sigma=0.5, num_classes=2, channels=3, size_multiple=1, batch_size=4)
        self.seen = []

    def infer(self, x_noisy):
        self.seen.append(x_noisy.copy())
        return (x_noisy[:, 0] > 0.5).astype(np.uint8)


def test_noise_is_added_after_the_replication_iid_in_every_channel():
    inner = RecordingBackend()
    backend = ReplicatedInput(inner, Replicate(1, 3))
    x = np.random.default_rng(2).random((1, 6, 5)).astype(np.float32)
    counts = backend.sample_counts(x, 6, seed=11, offset=3)
    assert counts.shape == (2, 6, 5) and counts.sum(axis=0).max() == 6
    noisy = np.concatenate(inner.seen)
    expected = np.repeat(x, 3, axis=0)[None] + np.float32(0.5) * kernels.gaussian_noise(11, 3, 6, 3 * 30).reshape(
        6, 3, 6, 5)
    np.testing.assert_allclose(noisy, expected, atol=1e-6)  # the keyed noise of the 3-channel space
    assert not np.allclose(noisy[:, 0], noisy[:, 1])  # independent noise per channel, not a replicated noise
    assert backend.channels == 1 and backend.sigma == 0.5 and backend.record["adapter"]["channels"] == 3
    calls = []
    backend.progress = calls.append  # the progress bar is the inner loop's
    backend.sample_counts(x, 5, seed=0, offset=0)
    assert calls == [4, 1] and inner.progress == calls.append
    with pytest.raises(InputError, match=r"the model takes \(1, H, W\) \(replicated into its denoiser's 3"):
        backend.sample_counts(np.zeros((3, 6, 5), np.float32), 2, 0, 0)
