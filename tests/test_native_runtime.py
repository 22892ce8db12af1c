"""The native runtime (cpp_ext/runtime, certseg-run, the C example): built with CMake once per session, then

* certseg-run and the Python runtime certify the same image with the same seed on fp32 and bf16 OpenVINO engines
  of the bundled chest model: identical labels and identical certificate fields (timing and paths aside);
* a hand-made engine whose base model is known exactly (thresholds): vote counts, labels, p-values and radius
  against numpy + scipy, through the C API (ctypes), with and without a channel-replicating adapter;
* refusals, each one line on stderr with exit 1 (usage: 2) and nothing written: tampered model file, missing or
  ill-typed manifest field, another OpenVINO version, images of the wrong size or channel count, NaN in a .npy,
  truncated PNG, bad option values; messages equal to the Python runtime's where both check the same thing;
* the image readers against certseg_rt.io.read_image, bit for bit;
* 200 certifies in one process with flat resident memory.

The OpenVINO engines come from `native_helpers.openvino_engine` and the Python certificates from
`native_helpers.python_certificate`, stand-ins for issue 14's `build-engine --backend openvino` and OpenVINO runner
(see there).  The build takes ~20 s of CPU (measured by benchmarks/bench_native.py).
"""
from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from native_helpers import (
    PythonOpenVino,
    build_native,
    comparable,
    cpu_has_bf16,
    missing_build_tools,
    openvino_engine,
    python_certificate,
    threshold_counts,
    threshold_engine,
)

pytestmark = pytest.mark.skipif(missing_build_tools() is not None, reason=str(missing_build_tools()))


@pytest.fixture(scope="session")
def native(tmp_path_factory) -> dict:
    return build_native(tmp_path_factory.mktemp("certseg_native"))


@pytest.fixture(scope="session")
def ov_engines(engine_dir, tmp_path_factory) -> dict:
    """fp32 (and, where the CPU has native bf16, bf16) OpenVINO engines of the bundled chest model."""
    root = tmp_path_factory.mktemp("ov_engines")
    precisions = ["fp32"] + (["bf16"] if cpu_has_bf16() else [])
    return {p: openvino_engine(engine_dir, root / p, p) for p in precisions}


@pytest.fixture(scope="session")
def phantom_files(phantom, tmp_path_factory) -> dict:
    from PIL import Image

    root = tmp_path_factory.mktemp("phantom_files")
    png = root / "phantom.png"
    Image.fromarray(np.round(phantom.image[0] * 255).astype(np.uint8)).save(png)
    npy = root / "phantom.npy"
    np.save(npy, phantom.image)
    return {"png": png, "npy": npy}


def run(program, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *map(str, args)], check=False, capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The message of a failed certseg-run: exit 1, nothing on stdout, exactly one line on stderr."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0][len("Error: "):]


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
    theirs, labels = python_certificate(PythonOpenVino(engine), phantom_files["png"], seed=SEEDS[precision])

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
    _fields_ = [("threads", ctypes.c_int), ("batch_size", ctypes.c_int)]


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
    rc = lib.certseg_engine_open(str(path).encode(), ctypes.byref(OpenOptions(0, batch_size)), ctypes.byref(handle))
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


def test_batch_size_does_not_change_the_certificate(runtime, ov_engines, phantom):
    """The base model is one function of one sample: the engine's dynamic batch range gives every sample the same
    labels whatever the batch (static-shape bf16 models do not: see runtime/openvino_model.cpp)."""
    engine = ov_engines.get("bf16", ov_engines["fp32"])
    results = []
    for batch in (1, 7):
        rc, handle = open_engine(runtime, engine, batch_size=batch)
        assert rc == 0, runtime.certseg_runtime_last_error()
        try:
            # n = 40 and a lax alpha: few samples, yet certified pixels (all 40 votes agree) as well as abstentions
            rc, labels, pvalues, cert = certify(runtime, handle, phantom.image, n0=5, n=40, alpha=0.5, seed=1)
            assert rc == 0, runtime.certseg_runtime_last_error()
        finally:
            runtime.certseg_engine_close(handle)
        results.append((labels, pvalues, {k: v for k, v in cert.items() if k != "seconds"}))
    (labels1, p1, cert1), (labels7, p7, cert7) = results
    assert np.array_equal(labels1, labels7) and np.array_equal(p1, p7) and cert1 == cert7
    assert 0 < cert1["abstain_fraction"] < 1


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


# ---- refusals: one line, exit 1, nothing written; the Python runtime's messages -------------------------------

def python_refusal(engine) -> str:
    """The message the Python runtime gives for the same engine directory (manifest checks)."""
    from certseg_rt.errors import CertsegError
    from certseg_rt.manifest import load_manifest

    with pytest.raises(CertsegError) as info:
        load_manifest(engine)
    return str(info.value)


def broken_copy(src: Path, dst: Path, edit=None, tamper: str | None = None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        m = json.loads((dst / "manifest.json").read_text())
        edit(m)
        (dst / "manifest.json").write_text(json.dumps(m))
    if tamper is not None:
        data = bytearray((dst / tamper).read_bytes())
        data[len(data) // 2] ^= 1
        (dst / tamper).write_bytes(bytes(data))
    return dst


def _set(path, value):
    def edit(m):
        *parents, last = path.split(".")
        for p in parents:
            m = m[p]
        if value is KeyError:
            del m[last]
        else:
            m[last] = value
    return edit


# (name, edit, tampered file, the same message as Python's load_manifest, a part of the message)
ENGINE_REFUSALS = [
    ("tampered-bin", None, "model.bin", True, "engine file model.bin changed since it was built (sha256 mismatch"),
    ("tampered-xml", None, "model.xml", True, "engine file model.xml changed since it was built"),
    ("missing-sigma", _set("sigma", KeyError), None, True, "lacks field(s) sigma"),
    ("string-sigma", _set("sigma", "0.25"), None, True, "field sigma is '0.25'; it must be a number > 0"),
    ("bool-height", _set("input.height", True), None, True, "field input must give channels, height and width"),
    ("batch-order", _set("batch_sizes.min", 64), None, True, "field batch_sizes must give integers 1 <= min"),
    ("classes", _set("classes", []), None, True, "field classes must list 1 to 255 class names"),
    ("format", _set("format_version", 2), None, True, "has format_version 2, this certseg-rt reads 1"),
    ("outside", lambda m: m["files"].update({"../model.bin": "0" * 64}), None, True,
     "lists file '../model.bin' outside the engine"),
    ("another-openvino", lambda m: [_set(f, "2025.1.0-18503-abc")(m) for f in ("openvino.version", "tools.openvino")],
     None, False,
     "engine field openvino.version is 2025.1.0-18503-abc, but this is OpenVINO 2026."),
    ("backend", _set("backend", "onnxruntime"), None, False,
     "engine field backend is 'onnxruntime', which this runtime cannot run (it knows openvino)"),
    ("precision-mismatch", _set("openvino.inference_precision", "bf16"), None, False,
     "field openvino.inference_precision is bf16 but field precision is fp32"),
    ("adapter", _set("adapter", {"kind": "resize"}), None, False, "engine field adapter has kind 'resize', which"),
]


@pytest.mark.parametrize("name,edit,tamper,same_as_python,message", ENGINE_REFUSALS, ids=[r[0] for r in ENGINE_REFUSALS])
def test_engine_refusals(native, ov_engines, phantom_files, tmp_path, name, edit, tamper, same_as_python, message):
    engine = broken_copy(ov_engines["fp32"], tmp_path / "engine", edit, tamper)
    mask = tmp_path / "out" / "mask.png"
    error = one_line_error(run(native["certseg_run"], engine, phantom_files["png"], "--json", "--out", mask))
    assert message in error
    assert "certseg-rt build-engine" in error or "Python runtime" in error  # and says what to do
    if same_as_python:
        assert error == python_refusal(engine)
    assert not mask.parent.exists()


def test_engine_directory_refusals_match_python(native, phantom_files, tmp_path):
    (tmp_path / "empty").mkdir()
    for engine in (tmp_path / "missing", tmp_path / "empty"):
        error = one_line_error(run(native["certseg_run"], engine, phantom_files["png"]))
        assert error == python_refusal(engine)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    assert "manifest.json is not valid JSON" in one_line_error(run(native["certseg_run"], tmp_path / "bad",
                                                                   phantom_files["png"]))


def _image_cases(tmp: Path, phantom) -> list:
    from PIL import Image

    gray = np.round(phantom.image[0] * 255).astype(np.uint8)
    cases = []
    small = tmp / "small.png"
    Image.fromarray(gray[::2, ::2]).save(small)
    cases.append((small, "image is 64x64 but the engine was built for 128x128; resize the image"))
    colour = tmp / "colour.png"
    Image.fromarray(np.stack([gray, gray[::-1], gray], -1)).save(colour)
    cases.append((colour, "is a colour image but the model takes 1 channel"))
    two = tmp / "two.npy"
    np.save(two, np.stack([phantom.image[0]] * 2, axis=-1))  # (H, W, 2)
    cases.append((two, "has 2 channels; certseg-rt takes 1 (grayscale) or 3 (RGB)"))
    nan = tmp / "nan.npy"
    np.save(nan, np.where(np.eye(128, dtype=bool), np.nan, phantom.image[0]).astype(np.float32))
    cases.append((nan, "contains NaN or Inf values"))
    high = tmp / "high.npy"
    np.save(high, phantom.image * 2)
    cases.append((high, "has float values in ["))
    truncated = tmp / "truncated.png"
    full = tmp / "full.png"
    Image.fromarray(gray).save(full)
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    cases.append((truncated, "(truncated or not an image)"))
    short = tmp / "short.npy"
    short.write_bytes((tmp / "nan.npy").read_bytes()[:-100])
    cases.append((short, "as a numpy array (the data is shorter than its header says)"))
    return cases


def test_image_refusals(native, ov_engines, phantom, tmp_path):
    from certseg_rt.errors import InputError
    from certseg_rt.io import read_image

    for image, message in _image_cases(tmp_path, phantom):
        mask = tmp_path / f"{image.stem}-mask.png"
        error = one_line_error(run(native["certseg_run"], ov_engines["fp32"], image, "--out", mask))
        assert message in error, image
        assert not mask.exists()
        if image.stem in ("colour", "two", "nan", "high"):  # refused by read_image in Python too
            with pytest.raises(InputError) as info:
                read_image(image, 1)
            assert error == str(info.value)


OPTION_CASES = [
    (["--n", "0"], 1, "invalid n=0: must be an integer in [1, 2147483647] (votes are counted in int32)"),
    (["--n0", "-3"], 1, "invalid n0=-3"),
    (["--tau", "1.5"], 1, "invalid tau=1.5: must lie strictly between 0.5 and 1"),
    (["--alpha", "0"], 1, "invalid alpha=0.0: must lie strictly between 0 and 1"),
    (["--seed", "-1"], 1, "invalid seed=-1: must be an integer in [0, 2**64)"),
    (["--seed", str(2**64)], 1, f"invalid seed={2**64}: must be an integer in [0, 2**64)"),
    (["--out", "mask.jpg"], 1, "--out mask.jpg must end in .png"),
    (["--batch-size", "64"], 1, "batch size 64 is outside the engine's range 1..32"),
    (["--batch-size", "0"], 1, "invalid batch-size=0: must be an integer >= 1"),
    (["--sigma", "0.5"], 1, "--sigma 0.5 differs from the engine's sigma 0.25"),
    (["--correction", "sidak"], 2, "Invalid value for '--correction': 'sidak' is not one of 'holm', 'bonferroni'."),
    (["--n", "ten"], 2, "Invalid value for '--n': 'ten' is not a valid integer."),
    (["--tau"], 2, "Option '--tau' requires an argument."),
    (["--frobnicate"], 2, "No such option: --frobnicate"),
]


@pytest.mark.parametrize("args,code,message", OPTION_CASES, ids=[" ".join(c[0]) for c in OPTION_CASES])
def test_option_refusals(native, ov_engines, phantom_files, tmp_path, args, code, message):
    result = run(native["certseg_run"], ov_engines["fp32"], phantom_files["png"], *args, cwd=tmp_path)
    if code == 1:
        assert message in one_line_error(result)
    else:
        assert result.returncode == 2 and result.stdout == "" and f"Error: {message}" in result.stderr
        assert result.stderr.startswith("Usage: certseg-run [OPTIONS] ENGINE_DIR IMAGE")
    assert list(tmp_path.iterdir()) == []


def test_usage(native, ov_engines):
    missing = run(native["certseg_run"], ov_engines["fp32"])
    assert missing.returncode == 2 and "Error: Missing argument 'IMAGE'." in missing.stderr
    helped = run(native["certseg_run"], "--help")
    assert helped.returncode == 0 and "--correction [holm|bonferroni]" in helped.stdout
    version = run(native["certseg_run"], "--version")
    assert version.stdout.strip() == f"certseg-run {__import__('certseg_rt').__version__}"


def test_program_needs_no_python(native):
    """What users ship: the program, its library, OpenVINO's; never libpython."""
    ldd = subprocess.run(["ldd", str(native["certseg_run"])], check=True, capture_output=True, text=True).stdout
    assert "libcertseg_runtime.so" in ldd and "libopenvino.so" in ldd and "not found" not in ldd
    assert "libpython" not in ldd


# ---- the image readers, bit for bit -----------------------------------------------------------------------------

def _reader_cases(tmp: Path) -> list:
    from PIL import Image

    rng = np.random.default_rng(11)
    g8 = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    g16 = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    f = rng.random((9, 7), dtype=np.float32)
    cases = []

    def png(name, array, mode=None, channels=1, **save):
        path = tmp / f"{name}.png"
        (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path, **save)
        cases.append((path, channels))

    def npy(name, array, channels=1):
        path = tmp / f"{name}.npy"
        np.save(path, array)
        cases.append((path, channels))

    png("gray8", g8)
    png("gray16", g16)  # Pillow writes uint16 as a 16-bit grayscale PNG
    png("rgb", rgb, channels=3)
    png("rgb-equal", np.repeat(g8[..., None], 3, -1))  # equal channels: grayscale
    png("rgba", np.dstack([rgb, g8]), channels=3)
    png("gray-alpha", np.dstack([g8, g8[::-1]]), "LA")
    palette = tmp / "palette.png"
    Image.fromarray(rgb).quantize(16).save(palette)
    cases.append((palette, 3))
    npy("f32-hw", f)
    npy("f32-chw", f[None])
    npy("f64-hwc", f.astype(np.float64)[..., None])
    npy("f16", f.astype(np.float16))
    npy("u8", g8)
    npy("u16", g16)
    npy("rgb-chw", np.moveaxis(rgb, -1, 0).astype(np.float32) / 255, channels=3)
    npy("fortran", np.asfortranarray(f))
    npy("fortran-chw", np.asfortranarray(np.moveaxis(rgb, -1, 0)), channels=3)
    npy("big-endian", f.astype(">f4"))
    return cases


def test_image_reader_equals_read_image(native, tmp_path):
    from certseg_rt.io import read_image

    probe = native["soak"].parent / "image_probe"
    for path, channels in _reader_cases(tmp_path):
        out = tmp_path / f"{path.name}.f32"
        result = run(probe, path, channels, out)
        notes = []
        ref = read_image(path, channels, note=notes.append)
        assert result.returncode == 0, (path.name, result.stderr)
        assert result.stdout.split() == [str(s) for s in ref.shape], path.name
        got = np.fromfile(out, np.float32).reshape(ref.shape)
        assert np.array_equal(got, ref), path.name  # bit for bit (no NaN here)
        assert result.stderr.splitlines() == [f"note: {n}" for n in notes], path.name


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
