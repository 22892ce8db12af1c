"""The assumptions README's Guarantees section rests on, each tested so that breaking it fails a test.

* Selection and estimation samples are disjoint draws, keyed as documented: CERTIFY's n0 selection samples are
  sample indices 0..n0-1 and its n estimation samples n0..n0+n-1 of noise stream `seed`; PREDICT's are 0..n-1.
  Checked by regenerating every sample's noise alone (kernels.fill_noisy) and identifying each noisy input the
  model was given, so asking for the estimation samples at offset 0 (reusing the selection draws) fails.
* tau, alpha, n0, n, the correction and the seed are fixed before any sampling: an invalid one is refused before
  the backend is asked for a single sample.
* The defaults are the documented ones, the correction asked for is the one applied, and the certificate records
  the seed and the backend that ran.
"""
from __future__ import annotations

import importlib
import types

import numpy as np
import pytest
from scipy.stats import binom

from certseg_rt import ABSTAIN, certify, certify_from_counts, kernels, predict
from certseg_rt.certify import DEFAULTS
from certseg_rt.runtime.sampling import GraphBackend

SIGMA = 0.5


class NoiseRecorder(GraphBackend):
    """A graph backend whose 'model' thresholds the noisy input; it keeps, per sample_counts call, every noisy
    input it was given, so that a test can tell which sample indices of which stream it saw."""

    name = "noise-recorder"

    def __init__(self, batch_size: int = 4):
        super().__init__(sigma=SIGMA, num_classes=2, channels=1, size_multiple=1, batch_size=batch_size)
        self.calls: list[list[np.ndarray]] = []

    def sample_counts(self, x, num, seed, offset):
        self.calls.append([])
        return super().sample_counts(x, num, seed, offset)

    def infer(self, x_noisy):
        self.calls[-1].extend(sample.copy() for sample in x_noisy)
        return (x_noisy[:, 0] > 0.5).astype(np.uint8)


def _sample_indices(x, seed, seen, upto):
    """Which sample index of stream `seed` each seen noisy input is (None where it is none of 0..upto-1)."""
    reference = kernels.fill_noisy(x, SIGMA, seed, 0, np.empty((upto, *x.shape), np.float32))
    index = {reference[s].tobytes(): s for s in range(upto)}
    return [index.get(sample.tobytes()) for sample in seen]


def _image():
    return np.random.default_rng(3).uniform(0.2, 0.8, (1, 6, 5)).astype(np.float32)


@pytest.mark.parametrize("n0, n, seed, batch", [(3, 7, 11, 4), (10, 100, 0, 32), (1, 1, 2**40 + 5, 1)])
def test_certify_draws_are_disjoint_and_keyed_as_documented(n0, n, seed, batch):
    x = _image()
    backend = NoiseRecorder(batch)
    cert = certify(backend, x, n0=n0, n=n, tau=0.6, alpha=0.5, seed=seed)
    selection, estimation = backend.calls
    assert _sample_indices(x, seed, selection, n0 + n) == list(range(n0))
    assert _sample_indices(x, seed, estimation, n0 + n) == list(range(n0, n0 + n))
    # The certificate is the statistics of exactly those draws: counts rebuilt from the regenerated noise.
    noisy = kernels.fill_noisy(x, SIGMA, seed, 0, np.empty((n0 + n, *x.shape), np.float32))
    votes = (noisy[:, 0] > 0.5).astype(np.int32)
    counts0 = np.stack([n0 - votes[:n0].sum(0), votes[:n0].sum(0)]).astype(np.int32)
    counts = np.stack([n - votes[n0:].sum(0), votes[n0:].sum(0)]).astype(np.int32)
    expected = certify_from_counts(counts0, counts, n=n, sigma=SIGMA, tau=0.6, alpha=0.5)
    assert np.array_equal(cert.labels, expected.labels) and np.array_equal(cert.pvalues, expected.pvalues)


def test_estimation_reusing_the_selection_draws_is_detected():
    """The check above fails for the offset-0 bug: estimation draws taken at sample indices 0..n-1."""
    x = _image()
    backend = NoiseRecorder(4)
    backend.sample_counts(x, 3, 11, offset=0)
    backend.sample_counts(x, 7, 11, offset=0)  # what `certify` would do with the bug
    assert _sample_indices(x, 11, backend.calls[1], 10) != list(range(3, 10))


def test_another_seed_is_another_stream():
    x = _image()
    backend = NoiseRecorder(4)
    certify(backend, x, n0=2, n=3, tau=0.6, alpha=0.5, seed=8)
    assert _sample_indices(x, 9, backend.calls[0] + backend.calls[1], 5) == [None] * 5


@pytest.mark.parametrize("n, seed", [(5, 4), (1, 0)])
def test_predict_draws_are_keyed_as_documented(n, seed):
    x = _image()
    backend = NoiseRecorder(2)
    pred = predict(backend, x, n=n, alpha=0.5, seed=seed)
    (draws,) = backend.calls
    assert _sample_indices(x, seed, draws, n) == list(range(n))
    assert pred.seed == seed


class CallRecorder:
    """A backend that records the (num, seed, offset) it is asked for and returns fixed counts for them."""

    name = "call-recorder"
    sigma = 0.25
    num_classes = 2
    input_shape = (1, 1, 2)

    def __init__(self, estimation_counts=(100, 100)):
        self.asked = []
        self.estimation = np.asarray(estimation_counts)

    def sample_counts(self, x, num, seed, offset):
        assert x is not None, "the backend was not given the image"
        self.asked.append((num, seed, offset))
        k0 = np.full((1, 2), num) if not self.asked[1:] else np.minimum(self.estimation, num)[None]
        return np.stack([k0, num - k0]).astype(np.int32)


def test_certify_defaults_are_the_documented_ones():
    backend = CallRecorder()
    cert = certify(backend, np.zeros((1, 1, 2), np.float32))
    assert backend.asked == [(DEFAULTS["n0"], DEFAULTS["seed"], 0), (DEFAULTS["n"], DEFAULTS["seed"], DEFAULTS["n0"])]
    assert DEFAULTS == {"sigma": 0.25, "tau": 0.75, "alpha": 0.001, "n0": 10, "n": 100, "correction": "holm",
                        "seed": 0}  # README: "Defaults: sigma 0.25, tau 0.75, alpha 0.001, n0 10, n 100, Holm."
    assert (cert.n0, cert.n, cert.tau, cert.alpha, cert.correction, cert.seed) == (10, 100, 0.75, 0.001, "holm", 0)


def test_predict_defaults_are_the_documented_ones():
    backend = CallRecorder()
    pred = predict(backend, np.zeros((1, 1, 2), np.float32))
    assert backend.asked == [(100, 0, 0)]
    assert (pred.n, pred.alpha, pred.correction, pred.seed) == (100, 0.001, "holm", 0)


def _holm_only_counts(n=100, tau=0.75):
    """Estimation counts of two pixels and an alpha at which Holm certifies both and Bonferroni only the first:
    p(first) = tau**n <= alpha / 2, alpha / 2 < p(second) <= alpha."""
    k = 90
    p_second = binom.sf(k - 1, n, tau)
    return (n, k), 1.5 * p_second


def test_the_correction_asked_for_is_the_one_applied():
    counts, alpha = _holm_only_counts()
    holm = certify(CallRecorder(counts), np.zeros((1, 1, 2), np.float32), alpha=alpha, correction="holm")
    bonferroni = certify(CallRecorder(counts), np.zeros((1, 1, 2), np.float32), alpha=alpha, correction="bonferroni")
    assert holm.labels.tolist() == [[0, 0]] and holm.correction == "holm"
    assert bonferroni.labels.tolist() == [[0, ABSTAIN]] and bonferroni.correction == "bonferroni"


def test_predict_applies_the_correction_asked_for():
    """(20, 0) and (18, 2) at alpha 0.0006: Holm keeps both pixels, Bonferroni only the first (test_certify_exact)."""
    class FixedCounts(CallRecorder):
        def sample_counts(self, x, num, seed, offset):
            self.asked.append((num, seed, offset))
            return np.array([[[20, 18]], [[0, 2]]], np.int32)

    x = np.zeros((1, 1, 2), np.float32)
    assert predict(FixedCounts(), x, n=20, alpha=0.0006).labels.tolist() == [[0, 0]]
    bonferroni = predict(FixedCounts(), x, n=20, alpha=0.0006, correction="bonferroni")
    assert bonferroni.labels.tolist() == [[0, ABSTAIN]] and bonferroni.correction == "bonferroni"


@pytest.mark.parametrize("kwargs, needle", [({"tau": 1.5}, "tau"), ({"alpha": 0.0}, "alpha"), ({"n0": 0}, "n0"),
                                            ({"n": 0}, "n="), ({"correction": "none"}, "correction"),
                                            ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed")])
def test_parameters_are_refused_before_any_sample_is_drawn(kwargs, needle):
    class MustNotSample(CallRecorder):
        def sample_counts(self, *args, **kw):
            raise AssertionError("sampled before the parameters were checked")

    with pytest.raises(ValueError, match=f"invalid {needle}"):
        certify(MustNotSample(), np.zeros((1, 1, 2), np.float32), **kwargs)
    if "n0" not in kwargs and "tau" not in kwargs:
        with pytest.raises(ValueError, match=f"invalid {needle}"):
            predict(MustNotSample(), np.zeros((1, 1, 2), np.float32), **kwargs)


def test_certificate_records_the_seed_backend_and_time(monkeypatch):
    clock = iter([100.0, 100.123456789])
    certify_module = importlib.import_module("certseg_rt.certify")  # the package exports a function of that name
    monkeypatch.setattr(certify_module, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    cert = certify(CallRecorder(), np.zeros((1, 1, 2), np.float32), seed=77)
    assert cert.seed == 77
    assert cert.record == {"backend": "call-recorder", "seconds": 0.1235}  # rounded to 0.1 ms

    class WithRecord(CallRecorder):
        def __init__(self):
            super().__init__()
            self.record = {"backend": "with-record", "model_files": {"model.onnx": "ab12"}}

    clock = iter([5.0, 6.5])
    cert = certify(WithRecord(), np.zeros((1, 1, 2), np.float32))
    assert cert.record == {"backend": "with-record", "model_files": {"model.onnx": "ab12"}, "seconds": 1.5}


def test_graph_backend_certificate_names_the_backend():
    cert = certify(NoiseRecorder(4), _image(), n0=2, n=3, tau=0.6, alpha=0.5)
    assert cert.record["backend"] == "noise-recorder"
