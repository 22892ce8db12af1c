import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from certseg_rt.runtime.model_cache import default_root

# Real scans (fetch-data): release files are kept here once downloaded and verified (the platform's cache folder,
# not the session's compiled-model cache below, so that a second test run downloads nothing).
SCAN_CACHE = Path(os.environ.get("CERTSEG_SCAN_CACHE") or default_root() / "scans")
_SESSION_CACHE = None


def pytest_configure(config):
    """The compiled-model cache (runtime/model_cache.py) of the test session, in the environment so that
    subprocesses (certseg-run, CLI runs) share it: a temporary folder, never the user's own."""
    global _SESSION_CACHE
    _SESSION_CACHE = tempfile.mkdtemp(prefix="certseg-test-cache-")
    os.environ["CERTSEG_CACHE_DIR"] = _SESSION_CACHE


def pytest_unconfigure(config):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def chest_dir():
    from certseg_rt.zoo import bundled_model_dir

    return bundled_model_dir("chest")


@pytest.fixture(scope="session")
def reference(chest_dir):
    """The torch reference backend on the bundled chest model at the default sigma."""
    pytest.importorskip("torch")
    from certseg_rt.runtime.backends.torch_eager import open_model

    return open_model(chest_dir, 0.25, batch_size=8)


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


@pytest.fixture(scope="session")
def openvino_engines(tmp_path_factory):
    """OpenVINO engine directories of the bundled model at 128x128, fp32 (through the CLI), bf16 (where the CPU
    has native bf16) and int8 (NNCF), built once per session: ~20-40 s each here, parity included."""
    pytest.importorskip("torch")
    pytest.importorskip("openvino")
    from click.testing import CliRunner

    from certseg_rt.cli import main
    from certseg_rt.export.build import build_engine
    from certseg_rt.export.loaders import load_source
    from certseg_rt.runtime.backends.openvino import cpu_capabilities
    from certseg_rt.zoo import bundled_model_dir
    import openvino

    root = tmp_path_factory.mktemp("openvino")
    r = CliRunner().invoke(main, ["build-engine", "--backend", "openvino", "--precision", "fp32",
                                  "--out", str(root / "fp32"), "--batch-sizes", "1,8,32"])
    assert r.exit_code == 0, r.output
    engines = {"fp32": root / "fp32"}
    precisions = ["int8"] + (["bf16"] if "BF16" in cpu_capabilities(openvino.Core()) else [])
    for precision in precisions:
        build_engine(load_source(bundled_model_dir("chest")), 0.25, root / precision, backend="openvino",
                     precision=precision, batch_sizes=(1, 8, 32), log=lambda m: None)
        engines[precision] = root / precision
    return engines


@pytest.fixture(scope="session")
def native(tmp_path_factory) -> dict:
    """cpp_ext/ built with the native runtime, its program and the C example (CMake), once per session."""
    from native_helpers import build_native, missing_build_tools

    why = missing_build_tools()
    if why is not None:
        pytest.skip(why)
    return build_native(tmp_path_factory.mktemp("certseg_native"))


def _cached_release(source: str) -> Path:
    """The verified release file of a fetch-data source, from the cache ($CERTSEG_SCAN_CACHE or
    ~/.cache/certseg-rt/scans) or downloaded into it; skipped with the reason offline."""
    from certseg_rt.data import fetch as fetch_mod

    archive = fetch_mod.get_source(source)["archive"]
    cached = SCAN_CACHE / archive["filename"]
    if cached.is_file() and fetch_mod.sha256_of(cached) == archive["sha256"]:
        return cached
    SCAN_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=SCAN_CACHE) as tmp:  # the cache only ever holds whole, verified files
        try:
            path, _ = fetch_mod.obtain(archive, Path(tmp))
        except fetch_mod.CertsegError as e:
            if not str(e).startswith("cannot download"):
                raise  # a wrong hash is a failure, never a skip
            pytest.skip(f"the registry is unreachable, so {archive['filename']} cannot be fetched: {e}")
        os.replace(path, cached)
    return cached


@pytest.fixture(scope="session")
def liver_wheel():
    """The liver-ct-segmentation-package wheel (4.5 MB, LiTS case 117), verified (_cached_release)."""
    pytest.importorskip("mrcfile")
    pytest.importorskip("nibabel")
    return _cached_release("liver-ct")


@pytest.fixture(scope="session")
def amos_deb():
    """Debian's libcamitk5-data package (102 MB, AMOS case 0336 with organ meshes), verified (_cached_release)."""
    pytest.importorskip("nibabel")
    return _cached_release("amos-ct")


def _fetched(source: str, release: Path, tmp_path_factory) -> Path:
    """`certseg-rt fetch-data SOURCE` from its cached release file, into a fresh folder."""
    from click.testing import CliRunner

    from certseg_rt.cli import main

    out = tmp_path_factory.mktemp("scans") / source
    r = CliRunner().invoke(main, ["fetch-data", source, str(out), "--from", str(release)])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def amos_dir(amos_deb, tmp_path_factory):
    """`certseg-rt fetch-data amos-ct`, once per session."""
    return _fetched("amos-ct", amos_deb, tmp_path_factory)


@pytest.fixture(scope="session")
def lits_dir(liver_wheel, tmp_path_factory):
    """`certseg-rt fetch-data liver-ct`, once per session."""
    return _fetched("liver-ct", liver_wheel, tmp_path_factory)
