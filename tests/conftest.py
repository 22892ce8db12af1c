import numpy as np
import pytest


@pytest.fixture(scope="session")
def chest_dir():
    from certseg_rt.zoo import bundled_model_dir

    return bundled_model_dir("chest")


@pytest.fixture(scope="session")
def reference(chest_dir):
    """The torch reference backend on the bundled chest model at the default sigma."""
    pytest.importorskip("torch")
    from certseg_rt.runtime.backends.torch_eager import reference_backend

    return reference_backend(chest_dir, 0.25, batch_size=8)


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory):
    """An ONNX Runtime engine directory of the bundled model, built once per session (~20 s)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from click.testing import CliRunner

    from certseg_rt.cli import main

    out = tmp_path_factory.mktemp("engines") / "chest"
    r = CliRunner().invoke(main, ["build-engine", "--out", str(out), "--batch-sizes", "1,8,32"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def phantom():
    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom

    return make_phantom(HELD_OUT_SEEDS[0], size=128)


class BernoulliBackend:
    """A backend whose base model is known exactly: pixel p outputs class 0 with probability prob[p],
    else class 1.  Counts are drawn from the binomial law of that model, keyed by (seed, offset)."""

    name = "bernoulli"

    def __init__(self, prob: np.ndarray, sigma: float = 0.25):
        self.prob = np.asarray(prob, float)
        self.sigma = sigma
        self.num_classes = 2
        self.input_shape = (1, *self.prob.shape)

    def sample_counts(self, x, num, seed, offset):
        rng = np.random.default_rng([seed, offset])
        k0 = rng.binomial(num, self.prob).astype(np.int32)
        return np.stack([k0, num - k0])


@pytest.fixture
def bernoulli_backend():
    return BernoulliBackend
