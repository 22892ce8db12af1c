"""CERTIFY / PREDICT: soundness by Monte Carlo, determinism, independent draws, the denoiser formula."""
import numpy as np
import pytest

from certseg_rt import ABSTAIN, certify, predict
from certseg_rt import kernels
from certseg_rt.runtime.sampling import GraphBackend


def _fwer_bound(alpha, runs):
    return alpha + 3 * np.sqrt(alpha * (1 - alpha) / runs)


@pytest.mark.parametrize("correction", ["holm", "bonferroni"])
def test_monte_carlo_soundness_at_tau(bernoulli_backend, correction):
    """Every pixel's class probability is exactly tau (the null is true everywhere): a run that
    certifies any pixel is an error, and at most a fraction alpha of runs may err."""
    tau, alpha, runs = 0.75, 0.05, 2000
    backend = bernoulli_backend(np.full((4, 4), tau))
    errors = sum((certify(backend, None, n0=10, n=100, tau=tau, alpha=alpha, seed=s, correction=correction)
                  .labels != ABSTAIN).any() for s in range(runs))
    assert errors / runs <= _fwer_bound(alpha, runs)


def test_monte_carlo_power_and_sensitivity(bernoulli_backend):
    """The soundness check can fail: testing each pixel at alpha without correction errs far more
    often than alpha; and certify is not sound by abstaining: clear pixels are certified."""
    tau, alpha, runs = 0.75, 0.05, 2000
    null = bernoulli_backend(np.full((4, 4), tau))
    uncorrected = sum((certify(null, None, n0=10, n=100, tau=tau, alpha=alpha * 16, seed=s,
                               correction="bonferroni").labels != ABSTAIN).any() for s in range(runs))
    assert uncorrected / runs > _fwer_bound(alpha, runs)
    clear = bernoulli_backend(np.full((4, 4), 0.97))
    certified = np.mean([(certify(clear, None, tau=tau, alpha=0.001, seed=s).labels == 0).mean() for s in range(50)])
    assert certified > 0.95


class RecordingBackend(GraphBackend):
    """A graph backend whose 'model' thresholds the noisy input, and which keeps every batch it saw."""

    name = "recording"

    def __init__(self, batch_size):
        super().__init__(sigma=0.5, num_classes=2, channels=1, size_multiple=1, batch_size=batch_size)
        self.batches = []

    def infer(self, x_noisy):
        self.batches.append(x_noisy.copy())
        return (x_noisy[:, 0] > 0.5).astype(np.uint8)


def test_samples_within_a_batch_are_independent_draws():
    x = np.full((1, 16, 16), 0.5, np.float32)
    backend = RecordingBackend(batch_size=8)
    backend.sample_counts(x, 8, seed=3, offset=0)
    noise = (backend.batches[0] - x).reshape(8, -1) / 0.5
    corr = np.corrcoef(noise)
    off_diagonal = corr[~np.eye(8, dtype=bool)]
    assert np.abs(off_diagonal).max() < 5 / np.sqrt(noise.shape[1])  # a repeated draw would give 1
    # Each sample is the one its index keys, regenerated alone.
    for b in range(8):
        alone = kernels.fill_noisy(x, 0.5, 3, b, out=np.empty((1, 1, 16, 16), np.float32))
        assert np.array_equal(alone[0], backend.batches[0][b])


def test_counts_do_not_depend_on_batch_size():
    x = np.random.default_rng(0).uniform(0, 1, (1, 12, 12)).astype(np.float32)
    counts = [RecordingBackend(bs).sample_counts(x, 23, seed=11, offset=5) for bs in (1, 4, 23, 64)]
    for c in counts[1:]:
        assert np.array_equal(c, counts[0])
    assert counts[0].sum(axis=0).min() == 23


def test_predict_abstains_on_coin_flips(bernoulli_backend):
    prob = np.array([[0.5, 0.99]])
    pred = predict(bernoulli_backend(prob), None, n=200, alpha=0.01, seed=1)
    assert pred.labels.tolist() == [[ABSTAIN, 0]]


def test_certify_is_deterministic_and_seeded(reference, phantom):
    a = certify(reference, phantom.image, n0=4, n=12, alpha=0.05, seed=5)
    b = certify(reference, phantom.image, n0=4, n=12, alpha=0.05, seed=5)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.pvalues, b.pvalues)
    c0 = reference.sample_counts(phantom.image, 12, seed=6, offset=4)
    c1 = reference.sample_counts(phantom.image, 12, seed=5, offset=4)
    assert not np.array_equal(c0, c1)  # another seed is another noise stream
    assert a.record["model_files"]["segmenter.safetensors"] and a.record["backend"] == "torch-eager"


# The bundled models' certified Dice is pinned to README's figures in tests/test_pinned_numbers.py.
