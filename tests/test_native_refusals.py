"""The native runtime's refusals and image readers (the build and engines: test_native_runtime.py's helpers).

* Refusals, each one line on stderr with exit 1 (usage: 2) and nothing written: tampered model file, missing or
  ill-typed manifest field, another OpenVINO version, images of the wrong size or channel count, NaN in a .npy,
  truncated PNG, bad option values; messages equal to the Python runtime's where both check the same thing.
* certseg-run's image readers against certseg_rt.io.read_image, bit for bit (PNG and .npy layouts and types).

The OpenVINO engines are `certseg-rt build-engine --backend openvino`'s (conftest's ``openvino_engines``).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from native_helpers import missing_build_tools, one_line_error, run

pytestmark = pytest.mark.skipif(missing_build_tools() is not None, reason=str(missing_build_tools()))


@pytest.fixture(scope="session")
def phantom_png(phantom, tmp_path_factory) -> Path:
    from PIL import Image

    png = tmp_path_factory.mktemp("refusal_images") / "phantom.png"
    Image.fromarray(np.round(phantom.image[0] * 255).astype(np.uint8)).save(png)
    return png


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
    ("batching", _set("openvino.batching", "dynamic"), None, False,
     'field openvino.batching must be "static-per-call", got "dynamic"'),
]


@pytest.mark.parametrize("name,edit,tamper,same_as_python,message", ENGINE_REFUSALS, ids=[r[0] for r in ENGINE_REFUSALS])
def test_engine_refusals(native, openvino_engines, phantom_png, tmp_path, name, edit, tamper, same_as_python, message):
    engine = broken_copy(openvino_engines["fp32"], tmp_path / "engine", edit, tamper)
    mask = tmp_path / "out" / "mask.png"
    error = one_line_error(run(native["certseg_run"], engine, phantom_png, "--json", "--out", mask))
    assert message in error
    assert "certseg-rt build-engine" in error or "Python runtime" in error  # and says what to do
    if same_as_python:
        assert error == python_refusal(engine)
    assert not mask.parent.exists()


def test_engine_directory_refusals_match_python(native, phantom_png, tmp_path):
    (tmp_path / "empty").mkdir()
    for engine in (tmp_path / "missing", tmp_path / "empty"):
        error = one_line_error(run(native["certseg_run"], engine, phantom_png))
        assert error == python_refusal(engine)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    assert "manifest.json is not valid JSON" in one_line_error(run(native["certseg_run"], tmp_path / "bad",
                                                                   phantom_png))


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


def test_image_refusals(native, openvino_engines, phantom, tmp_path):
    from certseg_rt.errors import InputError
    from certseg_rt.io import read_image

    for image, message in _image_cases(tmp_path, phantom):
        mask = tmp_path / f"{image.stem}-mask.png"
        error = one_line_error(run(native["certseg_run"], openvino_engines["fp32"], image, "--out", mask))
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
def test_option_refusals(native, openvino_engines, phantom_png, tmp_path, args, code, message):
    result = run(native["certseg_run"], openvino_engines["fp32"], phantom_png, *args, cwd=tmp_path)
    if code == 1:
        assert message in one_line_error(result)
    else:
        assert result.returncode == 2 and result.stdout == "" and f"Error: {message}" in result.stderr
        assert result.stderr.startswith("Usage: certseg-run [OPTIONS] ENGINE_DIR IMAGE")
    assert list(tmp_path.iterdir()) == []


def test_usage(native, openvino_engines):
    missing = run(native["certseg_run"], openvino_engines["fp32"])
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
