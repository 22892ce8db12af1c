"""The native runtime (cpp_ext/runtime, certseg-run, the C example): built with CMake once per session, then

* certseg-run and the Python runtime certify the same image with the same seed on fp32 and bf16 OpenVINO engines
  of the bundled chest model: identical labels and identical certificate fields (timing and paths aside);
* a hand-made engine whose base model is known exactly (thresholds): vote counts, labels, p-values and radius
  against numpy + scipy, through the C API (ctypes), with and without a channel-replicating adapter;
* at other batch sizes the certificates are still the Python runtime's (one static batch per call, manifest
  field openvino.batching); the radius is scipy's bit for bit;
* 200 certifies in one process with flat resident memory.

Refusals and the image readers are in test_native_refusals.py.

The OpenVINO engines are `certseg-rt build-engine --backend openvino`'s (conftest's session fixture
``openvino_engines``) and the Python certificates `certseg-rt certify --engine --json`'s
(`native_helpers.python_certificate`).  A clean build takes ~30 s of CPU (44 s wall on 2 shared cores).
"""
from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest
from native_helpers import (
    comparable,
    missing_build_tools,
    python_certificate,
    run,
    threshold_counts,
    threshold_engine,
)

pytestmark = pytest.mark.skipif(missing_build_tools() is not None, reason=str(missing_build_tools()))


@pytest.fixture(scope="session")
def ov_engines(openvino_engines) -> dict:
    """fp32 (and, where the CPU has native bf16, bf16) OpenVINO engines of the bundled chest model."""
    return {p: e for p, e in openvino_engines.items() if p in ("fp32", "bf16")}


@pytest.fixture(scope="session")
def phantom_files(phantom, tmp_path_factory) -> dict:
    from PIL import Image

    root = tmp_path_factory.mktemp("phantom_files")
    png = root / "phantom.png"
    Image.fromarray(np.round(phantom.image[0] * 255).astype(np.uint8)).save(png)
    npy = root / "phantom.npy"
    np.save(npy, phantom.image)
    return {"png": png, "npy": npy}


# ---- the same certificate as the Python runtime ----------------------------------------------------------------

# Seeds per precision: fp32 runs the default seed (shared with the example program's test), bf16 another one.
SEEDS = {"fp32": 0, "bf16": 3}


@pytest.fixture(scope="session")
def native_certificates(native, ov_engines, phantom_files, tmp_path_factory) -> dict:
    """certseg-run --json --out on the phantom PNG, per engine precision: (certificate, mask path)."""
    out = {}
    for precision, engine in ov_engines.items():
        mask = tmp_path_factory.mktemp(f"native_{precision}") / "masks" / "mask.png"
        result = run(native["certseg_run"], engine, phantom_files["png"], "--json", "--seed", SEEDS[precision],
                     "--out", mask)
        assert result.returncode == 0, result.stderr
        out[precision] = (json.loads(result.stdout), mask)
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_certificate_equals_python_runtime(native_certificates, ov_engines, phantom_files, precision):
    if precision not in ov_engines:
        pytest.skip("this CPU has no native bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES), so no bf16 engine")
    from PIL import Image

    engine = ov_engines[precision]
    ours, mask = native_certificates[precision]
    theirs, labels = python_certificate(engine, phantom_files["png"], seed=SEEDS[precision],
                                        out=mask.parent / "python.png")

    assert comparable(ours) == comparable(theirs)  # every field, radius and abstain_fraction bit for bit
    assert np.array_equal(np.asarray(Image.open(mask)), labels)
    manifest = json.loads((engine / "manifest.json").read_text())
    assert ours["model_files"] == manifest["files"] and ours["precision"] == precision
    assert ours["backend"] == "openvino:cpu" and ours["mask"] == str(mask) and ours["seed"] == SEEDS[precision]
    assert 0 < ours["abstain_fraction"] < 0.5 and all(v > 0 for v in ours["certified_pixels"].values())


def test_example_program_certifies_like_certseg_run(native, native_certificates, ov_engines, phantom_files, tmp_path):
    from PIL import Image

    from certseg_rt.io import read_image

    raw = tmp_path / "phantom.f32"
    read_image(phantom_files["png"], 1).astype("<f4").tofile(raw)  # the PNG's values, as certseg-run reads them
    labels_file = tmp_path / "labels.u8"
    example = run(native["example"], ov_engines["fp32"], raw, labels_file)
    assert example.returncode == 0, example.stderr
    program, mask = native_certificates["fp32"]  # the defaults, as the example uses them
    assert comparable(json.loads(example.stdout)) == {k: v for k, v in comparable(program).items()
                                                      if k != "image_sha256"}
    assert np.array_equal(np.fromfile(labels_file, np.uint8).reshape(128, 128), np.asarray(Image.open(mask)))


# ---- exact answers on a hand-made engine, through the C API ---------------------------------------------------

class Options(ctypes.Structure):
    _fields_ = [("n0", ctypes.c_int64), ("n", ctypes.c_int64), ("tau", ctypes.c_double), ("alpha", ctypes.c_double),
                ("seed", ctypes.c_uint64), ("correction", ctypes.c_int), ("progress", ctypes.c_void_p),
                ("progress_user", ctypes.c_void_p)]


class OpenOptions(ctypes.Structure):
    _fields_ = [("threads", ctypes.c_int), ("batch_size", ctypes.c_int), ("cache_dir", ctypes.c_char_p),
                ("n0", ctypes.c_int64), ("n", ctypes.c_int64)]


PROGRESS = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)


@pytest.fixture(scope="session")
def runtime(native):
    lib = ctypes.CDLL(str(native["library"]))
    p = ctypes.c_void_p
    lib.certseg_runtime_last_error.restype = ctypes.c_char_p
    lib.certseg_runtime_version.restype = ctypes.c_char_p
    lib.certseg_engine_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(OpenOptions), ctypes.POINTER(p)]
    lib.certseg_engine_close.argtypes = [p]
    lib.certseg_engine_image_shape.argtypes = [p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t),
                                               ctypes.POINTER(ctypes.c_size_t)]
    lib.certseg_engine_class_name.argtypes = [p, ctypes.c_size_t]
    lib.certseg_engine_class_name.restype = ctypes.c_char_p
    lib.certseg_certify_options_init.argtypes = [ctypes.POINTER(Options)]
    lib.certseg_certify.argtypes = [p, p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(Options),
                                    p, p, ctypes.POINTER(ctypes.c_char_p)]
    lib.certseg_string_free.argtypes = [ctypes.c_char_p]
    lib.certseg_sha256_file.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    return lib


def open_engine(lib, path, batch_size=0):
    handle = ctypes.c_void_p()
    options = OpenOptions(0, batch_size, None, 0, 0)  # the default cache folder (the session's), n0 10 and n 100
    rc = lib.certseg_engine_open(str(path).encode(), ctypes.byref(options), ctypes.byref(handle))
    return rc, handle


def certify(lib, handle, x, **kw):
    opt = Options()
    lib.certseg_certify_options_init(ctypes.byref(opt))
    for k, v in kw.items():
        setattr(opt, k, v)
    x = np.ascontiguousarray(x, np.float32)
    labels = np.full(x.shape[1:], 7, np.uint8)
    pvalues = np.full(x.shape[1:], -1.0)
    text = ctypes.c_char_p()
    rc = lib.certseg_certify(handle, x.ctypes.data, *x.shape, ctypes.byref(opt), labels.ctypes.data,
                             pvalues.ctypes.data, ctypes.byref(text))
    cert = json.loads(text.value) if rc == 0 else None
    return rc, labels, pvalues, cert


def threshold_image(rng, channels=1, height=24, width=20):
    """Values far from the thresholds (certified), near them (abstained) and in between."""
    levels = np.array([0.05, 0.37, 0.62, 0.95, 0.25, 0.5, 0.75, 0.3], np.float32)
    return levels[rng.integers(0, levels.size, (channels, height, width))]


@pytest.mark.parametrize("correction", [0, 1])  # CERTSEG_HOLM, CERTSEG_BONFERRONI
@pytest.mark.parametrize("replicate", [False, True])
def test_threshold_engine_exact(runtime, tmp_path, correction, replicate):
    from certseg_rt import stats
    from certseg_rt.certify import certify_from_counts

    sigma, batch = 0.1, 4
    engine = threshold_engine(tmp_path / "engine", channels=3 if replicate else 1, sigma=sigma, replicate=replicate)
    rc, handle = open_engine(runtime, engine, batch_size=batch)
    assert rc == 0, runtime.certseg_runtime_last_error()
    try:
        shape = (ctypes.c_size_t(), ctypes.c_size_t(), ctypes.c_size_t())
        runtime.certseg_engine_image_shape(handle, *map(ctypes.byref, shape))
        assert [s.value for s in shape] == [1, 24, 20]  # the image's channels, also with the adapter
        image = threshold_image(np.random.default_rng(5))
        seed, n0, n, tau, alpha = 2**63 + 11, 7, 33, 0.7, 0.01  # batches of 4 cut both phases unevenly
        seen = []
        progress = PROGRESS(lambda done, total, user: seen.append((done, total)))
        rc, labels, pvalues, cert = certify(runtime, handle, image, n0=n0, n=n, tau=tau, alpha=alpha, seed=seed,
                                            correction=correction, progress=ctypes.cast(progress, ctypes.c_void_p))
        assert rc == 0, runtime.certseg_runtime_last_error()
    finally:
        runtime.certseg_engine_close(handle)

    x = np.repeat(image, 3, axis=0) if replicate else image  # the noise space
    counts0 = threshold_counts(x, n0, seed, 0, sigma, batch)
    counts = threshold_counts(x, n, seed, n0, sigma, batch)
    ref = certify_from_counts(counts0, counts, n=n, sigma=sigma, tau=tau, alpha=alpha,
                              correction=("holm", "bonferroni")[correction])
    assert np.array_equal(labels, ref.labels)
    np.testing.assert_allclose(pvalues, ref.pvalues, rtol=1e-12, atol=0)
    assert 0 < ref.abstain_fraction < 1
    assert cert["radius"] == ref.radius == stats.certified_radius(sigma, tau)
    assert cert["abstain_fraction"] == ref.abstain_fraction
    assert cert["certified_pixels"] == ref.certified_pixels(["none", "low", "mid", "high"])
    assert cert["radius_at_input_resolution"] == (ref.radius / np.sqrt(3) if replicate else ref.radius)
    assert (cert.get("adapter") is not None) == replicate
    assert seen == [(4, 40), (7, 40)] + [(7 + k, 40) for k in range(4, 33, 4)] + [(40, 40)]


@pytest.mark.parametrize("batch", [1, 7])
def test_other_batch_sizes_certify_as_python(native, ov_engines, phantom_files, batch):
    """The batch decides the static batch every sample of a call runs at (n0 = 5 at 5 or 1, n = 40 at 7 or 1),
    and reduced precision picks its kernels per shape: at any batch the native certificate is the Python
    runtime's, on the bf16 engine where the CPU has one."""
    engine = ov_engines.get("bf16", ov_engines["fp32"])
    # n = 40 and a lax alpha: few samples, yet certified pixels (all 40 votes agree) as well as abstentions
    args = ["--json", "--n0", 5, "--n", 40, "--alpha", 0.5, "--seed", 1, "--batch-size", batch]
    result = run(native["certseg_run"], engine, phantom_files["png"], *args)
    assert result.returncode == 0, result.stderr
    ours = json.loads(result.stdout)
    theirs, _ = python_certificate(engine, phantom_files["png"], n0=5, n=40, alpha=0.5, seed=1, batch_size=batch)
    assert comparable(ours) == comparable(theirs) and ours["batch_size"] == batch
    assert 0 < ours["abstain_fraction"] < 1


def test_the_compiled_model_cache_is_shared_with_the_python_runtime(native, ov_engines, phantom_files, tmp_path):
    """certseg-run imports what the Python runtime compiled (same folder, keys and entries: nothing rewritten) and
    writes the entries Python would; a damaged entry is rebuilt; --no-cache writes nothing; a cache that cannot be
    written says so once.  The certificate is the same every way."""
    engine = ov_engines.get("bf16", ov_engines["fp32"])
    args = ["--json", "--n0", 5, "--n", 40, "--alpha", 0.5, "--seed", 2, "--batch-size", 8]
    python, native_cache = tmp_path / "python", tmp_path / "native"
    theirs, _ = python_certificate(engine, phantom_files["png"], n0=5, n=40, alpha=0.5, seed=2, batch_size=8,
                                   extra=("--cache-dir", python))
    blobs = lambda root: {p.name: (p.stat().st_ino, p.stat().st_size) for p in (root / "openvino").glob("*.blob")}
    written = blobs(python)
    assert len(written) == 2  # n0 = 5 and n = 40 at batch 8: static batches 5 and 8

    def certify(*extra, env=None):
        result = run(native["certseg_run"], engine, phantom_files["png"], *args, *extra, env=env)
        assert result.returncode == 0, result.stderr
        assert comparable(json.loads(result.stdout)) == comparable(theirs)
        return result.stderr

    assert certify("--cache-dir", python) == "" and blobs(python) == written  # imported, not recompiled
    certify("--cache-dir", native_cache)
    assert blobs(native_cache).keys() == written.keys()
    damaged = native_cache / "openvino" / sorted(written)[0]
    damaged.write_bytes(damaged.read_bytes()[:1000])
    certify("--cache-dir", native_cache)
    rebuilt = blobs(native_cache)
    assert rebuilt[damaged.name][1] > 1000
    certify("--cache-dir", native_cache)
    assert blobs(native_cache) == rebuilt  # the rebuilt entry is whole: imported, not rewritten
    certify("--no-cache", env={"CERTSEG_CACHE_DIR": str(tmp_path / "env")})
    assert not (tmp_path / "env").exists()
    (tmp_path / "file").write_text("not a folder")
    err = certify("--cache-dir", tmp_path / "file" / "cache")
    assert err.count("\n") == 1 and err.startswith("note: cannot write the compiled-model cache") and \
        "Not a directory" in err


def test_radius_is_scipys_bit_for_bit(native):
    """certseg_certified_radius (the kernel library's Phi^-1, Cephes' ndtri as scipy computes it) against
    certseg_rt.stats.certified_radius over the whole range of tau, both branches of the approximation."""
    from certseg_rt import stats

    lib = ctypes.CDLL(str(native["kernels"]))
    lib.certseg_certified_radius.argtypes = [ctypes.c_double, ctypes.c_double, ctypes.POINTER(ctypes.c_double)]
    boundary = 1 - 0.13533528323661269189  # where ndtri switches from the central to the tail approximation
    taus = np.concatenate([np.linspace(0.5, 1, 4001)[1:-1], [boundary, np.nextafter(boundary, 0), np.nextafter(boundary, 1)],
                           [0.75, 0.9, 0.99, 0.999, 1 - 1e-9, 1 - 2**-52, np.nextafter(0.5, 1)]])
    got = ctypes.c_double()
    for sigma in (0.25, 0.12, 1.0):
        for tau in taus:
            assert lib.certseg_certified_radius(sigma, float(tau), ctypes.byref(got)) == 0
            assert got.value == stats.certified_radius(sigma, float(tau)), (sigma, tau)
    assert lib.certseg_certified_radius(0.25, 0.5, ctypes.byref(got)) == 1  # CERTSEG_ERR_ARGUMENT: tau <= 0.5


def test_c_api_errors_leave_outputs_untouched(runtime, tmp_path):
    engine = threshold_engine(tmp_path / "engine")
    rc, handle = open_engine(runtime, tmp_path / "nowhere")
    assert rc == 10 and not handle.value  # CERTSEG_ERR_ENGINE
    assert runtime.certseg_runtime_last_error().decode().startswith(f"engine directory {tmp_path / 'nowhere'} does not")
    rc, handle = open_engine(runtime, engine, batch_size=9)
    assert rc == 1 and b"batch size 9 is outside the engine's range 1..8" in runtime.certseg_runtime_last_error()
    rc, handle = open_engine(runtime, engine)
    assert rc == 0 and runtime.certseg_runtime_last_error() == b""
    try:
        good = np.full((1, 24, 20), 0.5, np.float32)
        for x, code, message in [
            (np.full((1, 24, 21), 0.5, np.float32), 11, "image is 24x21 but the engine was built for 24x20"),
            (np.full((2, 24, 20), 0.5, np.float32), 11, "image has shape (2, 24, 20); the model takes (1, H, W)"),
            (np.where(np.eye(24, 20, dtype=bool)[None], np.nan, good).astype(np.float32), 11, "NaN or Inf"),
            (good * 3, 11, "image values lie in [1.5, 1.5]; the model takes [0, 1]"),
        ]:
            rc, labels, pvalues, cert = certify(runtime, handle, x)
            assert (rc, cert) == (code, None) and message in runtime.certseg_runtime_last_error().decode()
            assert (labels == 7).all() and (pvalues == -1).all()
        for kw, message in [({"tau": 0.5}, "invalid tau=0.5: must lie strictly between 0.5 and 1"),
                            ({"alpha": 1.0}, "invalid alpha=1.0: must lie strictly between 0 and 1"),
                            ({"n0": 0}, "invalid n0=0: must be an integer in [1, 2147483647]"),
                            ({"n": 2**31}, "invalid n=2147483648"),
                            ({"correction": 5}, "invalid correction=5: must be one of holm, bonferroni")]:
            rc, labels, _, _ = certify(runtime, handle, good, **kw)
            assert rc == 1 and message in runtime.certseg_runtime_last_error().decode() and (labels == 7).all()
        assert runtime.certseg_engine_class_name(handle, 3) == b"high"
        assert runtime.certseg_engine_class_name(handle, 4) is None
    finally:
        runtime.certseg_engine_close(handle)
    runtime.certseg_engine_close(None)
    assert runtime.certseg_runtime_version().decode() == __import__("certseg_rt").__version__
    digest = ctypes.create_string_buffer(65)
    assert runtime.certseg_sha256_file(str(engine / "model.bin").encode(), digest) == 0
    from certseg_rt.manifest import sha256_file

    assert digest.value.decode() == sha256_file(engine / "model.bin")


# ---- memory ----------------------------------------------------------------------------------------------------

def test_200_certifies_in_one_process_with_flat_memory(native, tmp_path):
    """On the threshold engine, so that the test stays fast (the runtime's and OpenVINO's per-call allocations are
    the same for any model); benchmarks/bench_native.py runs the same check on the chest engine."""
    engine = threshold_engine(tmp_path / "engine", height=128, width=128)
    raw = tmp_path / "image.f32"
    threshold_image(np.random.default_rng(2), height=128, width=128).astype("<f4").tofile(raw)
    result = run(native["soak"], engine, raw, 200, 20, 10, 30)
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    warm, final, identical = int(words[1]), int(words[3]), int(words[5])
    assert identical == 1  # the same certificate every time
    assert final - warm < 4096, f"resident memory grew by {final - warm} kB over 180 certifies"
