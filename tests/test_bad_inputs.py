"""Bad inputs at every entry point: the CLI verbs and the public Python API.

CLI: each bad input exits 1 with exactly one line on stderr (no traceback) and writes nothing.
API: a bad input raises the package's error (CertsegError / InputError, or ValueError where the
function is documented so), never anything else; property-based where the input space is large.
Faults: an interrupted evaluate keeps its finished records and resumes; a full disk is one line.
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from certseg_rt.cli import main
from certseg_rt.errors import CertsegError, InputError

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

# Few examples, derandomized: the module runs in about a minute and the same way every time.
FEW = settings(max_examples=12, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large])
FAST = ["--n0", "2", "--n", "4", "--alpha", "0.5"]
EVAL_FAST = ["--n0", "3", "--n", "30", "--tau", "0.6", "--alpha", "0.5", "--no-denoiser"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size but holds no pixels: a huge image in a few bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def png_rgb48(rgb: np.ndarray) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, written by hand: Pillow cannot write one."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    h, w, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[i].astype(">u2").tobytes() for i in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad (and a few good) input files, made once."""
    from certseg_rt.data.phantom import make_phantom

    d = tmp_path_factory.mktemp("bad")
    f = {"dir": d}
    good = (make_phantom(10_000_005).image[0] * 255).round().astype(np.uint8)
    Image.fromarray(good).save(f.setdefault("png", d / "good.png"))
    f["file"] = d / "a_file"
    f["file"].write_text("a regular file: nothing can be created under it, not even by root")
    f["missing"] = d / "missing.png"
    (d / "dir.png").mkdir()
    f["dir.png"] = d / "dir.png"
    f["random.png"] = d / "random.png"
    f["random.png"].write_bytes(np.random.default_rng(0).bytes(700))
    f["empty.png"] = d / "empty.png"
    f["empty.png"].write_bytes(b"")
    f["truncated.png"] = d / "truncated.png"
    f["truncated.png"].write_bytes(f["png"].read_bytes()[:300])
    rgb = np.stack([good] * 3, -1)
    rgb[..., 0] = 255 - rgb[..., 0]
    Image.fromarray(rgb).save(f.setdefault("colour.png", d / "colour.png"))
    Image.new("1", (128, 128)).save(f.setdefault("bilevel.png", d / "bilevel.png"))
    Image.fromarray(np.zeros((128, 128), np.int32)).save(f.setdefault("int32.tif", d / "int32.tif"))
    Image.fromarray(np.full((128, 128), 2.0, np.float32)).save(f.setdefault("range.tif", d / "range.tif"))
    f["huge.png"] = d / "huge.png"
    f["huge.png"].write_bytes(_png_header(5000, 4000))
    f["bomb.png"] = d / "bomb.png"
    f["bomb.png"].write_bytes(_png_header(20000, 20000))
    arrays = {
        "nan.npy": np.where(np.eye(128, dtype=bool), np.nan, 0.5).astype(np.float32),
        "inf.npy": np.where(np.eye(128, dtype=bool), np.inf, 0.5).astype(np.float32),
        "above.npy": np.full((128, 128), 1.5, np.float32),
        "below.npy": np.full((128, 128), -0.1, np.float64),
        "empty.npy": np.zeros((0, 128), np.float32),
        "int64.npy": np.zeros((128, 128), np.int64),
        "bool.npy": np.zeros((128, 128), bool),
        "complex.npy": np.zeros((128, 128), np.complex64),
        "4d.npy": np.zeros((1, 1, 128, 128), np.float32),
        "5ch.npy": np.zeros((5, 128, 128), np.float32),
        "4ch.npy": np.full((4, 128, 128), 0.5, np.float32),
    }
    for name, a in arrays.items():
        np.save(d / name, a)
        f[name] = d / name
    np.save(d / "object.npy", np.array([{"pickled": True}], dtype=object), allow_pickle=True)
    f["object.npy"] = d / "object.npy"
    f["truncated.npy"] = d / "truncated.npy"
    f["truncated.npy"].write_bytes((d / "above.npy").read_bytes()[:500])
    big = np.lib.format.open_memmap(d / "big.npy", mode="w+", dtype=np.uint8, shape=(5000, 5000))  # sparse file
    del big
    f["big.npy"] = d / "big.npy"
    with open(d / "claims_huge.npy", "wb") as fh:  # a header claiming 10^10 pixels, and no data
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000)})
    f["claims_huge.npy"] = d / "claims_huge.npy"
    f["rgb48.png"] = d / "rgb48.png"  # 16 bits per channel: Pillow alone would silently keep the high byte
    f["rgb48.png"].write_bytes(png_rgb48(np.full((128, 128, 3), 40000, np.uint16)))
    (d / "not_a_model").mkdir()
    f["not_a_model"] = d / "not_a_model"
    f["dataset"] = d / "dataset"
    assert CliRunner().invoke(main, ["make-phantoms", str(f["dataset"]), "--count", "2"]).exit_code == 0
    return f


def _one_line_error(result, needle):
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], (needle, lines[0])
    assert not (result.exception and not isinstance(result.exception, SystemExit)), result.exception


# (verb and arguments, with {out} for the output the verb would write, and what the one line must say)
CLI_CASES = {
    # certify: files
    "certify missing": (["certify", "{missing}", "--out", "{out}/mask.png"], "does not exist"),
    # a folder is a DICOM series (a volume) now: one that holds none says so
    "certify directory": (["certify", "{dir.png}", "--out", "{out}/mask.png"],
                          "is a folder that holds no DICOM images"),
    "certify random bytes": (["certify", "{random.png}", "--out", "{out}/mask.png"], "cannot read image"),
    "certify empty file": (["certify", "{empty.png}", "--out", "{out}/mask.png"], "cannot read image"),
    "certify truncated png": (["certify", "{truncated.png}", "--out", "{out}/mask.png"], "truncated"),
    "certify colour": (["certify", "{colour.png}", "--out", "{out}/mask.png"], "colour image"),
    "certify 1-bit png": (["certify", "{bilevel.png}", "--out", "{out}/mask.png"], "pixel type bool"),
    "certify int32 tiff": (["certify", "{int32.tif}", "--out", "{out}/mask.png"], "pixel type int32"),
    "certify float tiff > 1": (["certify", "{range.tif}", "--out", "{out}/mask.png"], "rescale"),
    "certify npy NaN": (["certify", "{nan.npy}", "--out", "{out}/mask.png"], "NaN"),
    "certify npy Inf": (["certify", "{inf.npy}", "--out", "{out}/mask.png"], "Inf"),
    "certify npy > 1": (["certify", "{above.npy}", "--out", "{out}/mask.png"], "[0, 1]"),
    "certify npy < 0": (["certify", "{below.npy}", "--out", "{out}/mask.png"], "[0, 1]"),
    "certify npy empty": (["certify", "{empty.npy}", "--out", "{out}/mask.png"], "empty"),
    "certify npy int64": (["certify", "{int64.npy}", "--out", "{out}/mask.png"], "pixel type int64"),
    "certify npy bool": (["certify", "{bool.npy}", "--out", "{out}/mask.png"], "pixel type bool"),
    "certify npy complex": (["certify", "{complex.npy}", "--out", "{out}/mask.png"], "pixel type complex64"),
    "certify npy 4-d": (["certify", "{4d.npy}", "--out", "{out}/mask.png"], "shape (1, 1, 128, 128)"),
    "certify npy 5 channels": (["certify", "{5ch.npy}", "--out", "{out}/mask.png"], "shape (5, 128, 128)"),
    "certify skin grayscale": (["certify", "{png}", "--model", "skin", "--out", "{out}/mask.png"], "grayscale"),
    "certify skin 16-bit colour": (["certify", "{rgb48.png}", "--model", "skin", "--out", "{out}/mask.png"],
                                   "16-bit"),
    "certify skin 4 channels": (["certify", "{4ch.npy}", "--model", "skin", "--out", "{out}/mask.png"], "4 channels"),
    "certify npy pickled objects": (["certify", "{object.npy}", "--out", "{out}/mask.png"], "never unpickles"),
    "certify npy truncated": (["certify", "{truncated.npy}", "--out", "{out}/mask.png"], "cannot read"),
    "certify npy claims 10^10 px": (["certify", "{claims_huge.npy}", "--out", "{out}/mask.png"], "cannot read"),
    "certify npy 25 Mpx": (["certify", "{big.npy}", "--out", "{out}/mask.png"], "megapixels"),
    "certify png 20 Mpx": (["certify", "{huge.png}", "--out", "{out}/mask.png"], "megapixels"),
    "certify png 400 Mpx": (["certify", "{bomb.png}", "--out", "{out}/mask.png"], "megapixels"),
    # certify: parameters and outputs
    "certify tau 1.2": (["certify", "{png}", "--tau", "1.2", "--out", "{out}/mask.png"], "tau"),
    "certify tau NaN": (["certify", "{png}", "--tau", "nan", "--out", "{out}/mask.png"], "tau"),
    "certify sigma Inf": (["certify", "{png}", "--sigma", "inf", "--out", "{out}/mask.png"], "sigma"),
    "certify n 0": (["certify", "{png}", "--n", "0", "--out", "{out}/mask.png"], "n="),
    "certify n 2^31": (["certify", "{png}", "--n", str(2**31), "--out", "{out}/mask.png"], "int32"),
    "certify seed -1": (["certify", "{png}", "--seed", "-1", "--out", "{out}/mask.png"], "seed"),
    "certify seed 2^64": (["certify", "{png}", "--seed", str(2**64), "--out", "{out}/mask.png"], "seed"),
    "certify batch 0": (["certify", "{png}", "--batch-size", "0", "--out", "{out}/mask.png"], "batch-size"),
    "certify out .jpg": (["certify", "{png}", "--out", "{dir}/mask.jpg"], ".png"),
    "certify out under a file": (["certify", "{png}", "--out", "{file}/sub/mask.png"], "cannot write"),
    "certify out is a directory": (["certify", "{png}", "--out", "{dir.png}"], "cannot write"),
    "certify no such model": (["certify", "{png}", "--model", "nosuch", "--out", "{out}/mask.png"], "no bundled model"),
    "certify model not a model": (["certify", "{png}", "--model", "{not_a_model}", "--out", "{out}/mask.png"],
                                  "not a model directory"),
    "certify model is a file": (["certify", "{png}", "--model", "{file}", "--out", "{out}/mask.png"], "does not exist"),
    "certify engine missing": (["certify", "{png}", "--engine", "{missing}", "--out", "{out}/mask.png"],
                               "does not exist"),
    "certify engine is a file": (["certify", "{png}", "--engine", "{file}", "--out", "{out}/mask.png"],
                                 "does not exist"),
    "certify engine other sigma": (["certify", "{png}", "--engine", "{engine}", "--sigma", "0.5",
                                    "--out", "{out}/mask.png"],
                                   "sigma"),
    "certify engine batch 100": (["certify", "{png}", "--engine", "{engine}", "--batch-size", "100",
                                  "--out", "{out}/mask.png"], "outside the engine's range"),
    "certify max-memory lots": (["certify", "{png}", "--max-memory", "lots", "--out", "{out}/mask.png"],
                                "--max-memory"),
    "certify max-memory 1K": (["certify", "{png}", "--max-memory", "1K", "--out", "{out}/mask.png"], "64 MiB"),
    "certify engine max-memory 100M": (["certify", "{png}", "--engine", "{engine}", "--max-memory", "100M",
                                        "--out", "{out}/mask.png"], "over the budget"),
    "certify threads 0": (["certify", "{png}", "--threads", "0", "--out", "{out}/mask.png"], "--threads"),
    # demo
    "demo count 0": (["demo", "--count", "0", "--out", "{out}"], "count"),
    "demo tau 0.5": (["demo", "--tau", "0.5", "--out", "{out}"], "tau"),
    "demo out under a file": (["demo", "--count", "1", "--out", "{file}/sub"], "cannot write"),
    "demo no such model": (["demo", "--model", "nosuch", "--out", "{out}"], "no bundled model"),
    # export
    "export out under a file": (["export", "--no-parity", "--out", "{file}/sub"], "cannot write"),
    "export sigma 0": (["export", "--sigma", "0", "--out", "{out}"], "sigma"),
    "export image size 1x2x3": (["export", "--image-size", "1x2x3", "--out", "{out}"], "--image-size"),
    "export image size 100000": (["export", "--image-size", "100000", "--out", "{out}"], "megapixels"),
    "export image size 100": (["export", "--image-size", "100", "--out", "{out}"], "multiple of 8"),
    "export one class name": (["export", "--classes", "a", "--out", "{out}"], "outputs 4 classes"),
    "export kwargs not JSON": (["export", "--segmenter-kwargs", "{bad", "--out", "{out}"], "JSON"),
    "export segmenter not TorchScript": (["export", "--segmenter", "{file}", "--out", "{out}"], "TorchScript"),
    "export denoiser not a folder": (["export", "--denoiser", "{file}", "--out", "{out}"], "unet/"),
    "export no such model": (["export", "--model", "nosuch", "--out", "{out}"], "no bundled model"),
    # build-engine
    "build out under a file": (["build-engine", "--out", "{file}/sub"], "cannot write"),
    "build batch sizes a": (["build-engine", "--batch-sizes", "a", "--out", "{out}"], "--batch-sizes"),
    "build batch sizes 0,1,2": (["build-engine", "--batch-sizes", "0,1,2", "--out", "{out}"], "MIN <= OPT"),
    "build threads 0": (["build-engine", "--threads", "0", "--out", "{out}"], "--threads"),
    "build threads -2": (["build-engine", "--threads", "-2", "--out", "{out}"], "--threads"),
    "build image size 100000": (["build-engine", "--image-size", "100000", "--out", "{out}"], "megapixels"),
    "build sigma -1": (["build-engine", "--sigma", "-1", "--out", "{out}"], "sigma"),
    "build precision bf16": (["build-engine", "--precision", "bf16", "--out", "{out}"], "no bf16 arithmetic"),
    "build precision fp16 ort": (["build-engine", "--precision", "fp16", "--out", "{out}"], "slower than fp32"),
    # make-phantoms
    "phantoms count 0": (["make-phantoms", "{out}", "--count", "0"], "--count"),
    "phantoms size 8": (["make-phantoms", "{out}", "--size", "8"], "--size"),
    "phantoms size 100001": (["make-phantoms", "{out}", "--size", "100001", "--count", "1"], "4096"),
    "phantoms first seed -1": (["make-phantoms", "{out}", "--first-seed", "-1", "--count", "1"], "--first-seed"),
    "phantoms under a file": (["make-phantoms", "{file}/sub", "--count", "1"], "cannot write"),
    # evaluate
    "evaluate no images/": (["evaluate", "{not_a_model}", "--out", "{out}"], "images/"),
    "evaluate dataset is a file": (["evaluate", "{file}", "--out", "{out}"], "images/"),
    "evaluate out under a file": (["evaluate", "{dataset}", "--out", "{file}/sub"], "cannot write"),
    "evaluate out is a file": (["evaluate", "{dataset}", "--out", "{file}"], "cannot write"),
    "evaluate sigma a,b": (["evaluate", "{dataset}", "--sigma", "a,b", "--out", "{out}"], "comma-separated"),
    "evaluate sigma -1": (["evaluate", "{dataset}", "--sigma", "0.25,-1", "--out", "{out}"], "sigma"),
    "evaluate n0 0": (["evaluate", "{dataset}", "--n0", "0", "--out", "{out}"], "n0"),
    "evaluate batch 0": (["evaluate", "{dataset}", "--batch-size", "0", "--out", "{out}"], "batch-size"),
    "evaluate max-memory 2X": (["evaluate", "{dataset}", "--max-memory", "2X", "--out", "{out}"], "--max-memory"),
    "evaluate engine two sigmas": (["evaluate", "{dataset}", "--engine", "{engine}", "--sigma", "0.25,0.5",
                                    "--out", "{out}"], "one sigma"),
    "evaluate engine other sigma": (["evaluate", "{dataset}", "--engine", "{engine}", "--sigma", "0.5",
                                     "--out", "{out}"], "sigma"),
    "evaluate engine missing": (["evaluate", "{dataset}", "--engine", "{missing}", "--out", "{out}"],
                                "does not exist"),
    "evaluate ray options without --ray": (["evaluate", "{dataset}", "--ray-workers", "2", "--out", "{out}"],
                                           "need --ray"),
    # bench: argument checks only (the real bench is never run: see the test)
    "bench sizes a": (["bench", "--sizes", "a"], "comma-separated"),
    "bench sizes 0": (["bench", "--sizes", "0"], "multiples of 8"),
    "bench sizes 100": (["bench", "--sizes", "100"], "multiples of 8"),
    "bench batch 0": (["bench", "--batch-sizes", "0,8"], "batch sizes must be >= 1"),
    "bench repeats 0": (["bench", "--repeats", "0"], "--repeats"),
    "bench torch fp16": (["bench", "--references", "torch-eager:fp32,torch-eager:fp16"], "--references"),
    "bench torch layout": (["bench", "--references", "torch-eager:fp32:nhwc"], "--references"),
    "bench tensorrt int8": (["bench", "--engines", "tensorrt:fp16,tensorrt:int8"], "--engines"),
    "bench precision fp64": (["bench", "--engines", "onnxruntime:fp32,onnxruntime:fp64"], "onnxruntime:fp64"),
    "bench unknown backend": (["bench", "--engines", "tflite:fp32"], "tflite:fp32"),
    "bench max-memory": (["bench", "--max-memory", "lots"], "--max-memory"),
    "bench engine missing": (["bench", "--engine", "{missing}"], "does not exist"),
    "bench engine other size": (["bench", "--engine", "{engine}", "--sizes", "256"], "engine for the first size"),
}


def _fill(arg, names):
    for key, value in names.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input_is_one_line_exit_1_and_writes_nothing(case, files, engine_dir, tmp_path, monkeypatch):
    import certseg_rt.bench.rows as rows
    import certseg_rt.bench.suite as suite

    def never(*args, **kwargs):
        raise AssertionError("the real bench would run")
    for module, name in ((suite, "machine"), (rows, "gflop_per_sample"), (suite, "row_in_subprocess")):
        monkeypatch.setattr(module, name, never)
    args, needle = CLI_CASES[case]
    out = tmp_path / "out"
    names = {k: str(v) for k, v in files.items()} | {"out": str(out), "engine": str(engine_dir)}
    before = sorted(p.name for p in files["dir"].iterdir())
    r = CliRunner().invoke(main, [_fill(a, names) for a in args])
    _one_line_error(r, needle)
    assert not out.exists()
    assert sorted(p.name for p in files["dir"].iterdir()) == before  # nothing written beside the inputs either
    assert not list(files["dir"].rglob(".*.tmp"))


@pytest.mark.parametrize("address,needle", [("127.0.0.1:1", "cannot reach the Ray head"), ("nohost", "HOST:PORT"),
                                            ("nosuch.invalid:6379", "cannot reach the Ray head")])
def test_evaluate_unreachable_ray_head_is_one_line(files, tmp_path, address, needle):
    pytest.importorskip("ray.data", reason="Ray is not installed (pip install 'certseg-rt[ray]')")
    import ray

    if ray.is_initialized():
        pytest.skip("this process is connected to a Ray cluster already")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["evaluate", str(files["dataset"]), "--out", str(out), "--ray", address])
    _one_line_error(r, needle)
    assert not out.exists()


def test_console_script_bad_input_no_traceback(files):
    r = subprocess.run([sys.executable, "-m", "certseg_rt.cli", "certify", str(files["bomb.png"])],
                       capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---------------------------------------------------------------------------------- engine directories


from engine_helpers import copy_engine as _copy_engine, edit_manifest as _edit_manifest  # noqa: E402


def _rehash(d, name):
    from certseg_rt.manifest import sha256_file

    _edit_manifest(d, lambda m: m["files"].update({name: sha256_file(d / name)}))


def _swap_graph(d):
    shutil.copy(d / "segmenter.onnx", d / "model.onnx")  # logits where labels belong
    _rehash(d, "model.onnx")


def _manifest_is_a_directory(d):
    (d / "manifest.json").unlink()
    (d / "manifest.json").mkdir()


# Cases beyond tests/test_engine.py's: hand-edited manifests, swapped and mismatched files.
BAD_MANIFESTS = {
    "input says 64x64": (lambda d: _edit_manifest(d, lambda m: m["input"].update(height=64, width=64)), "input"),
    "input says 3 channels": (lambda d: _edit_manifest(d, lambda m: m["input"].update(channels=3)), "input"),
    "input lacks height": (lambda d: _edit_manifest(d, lambda m: m["input"].pop("height")), "field input"),
    "six classes": (lambda d: _edit_manifest(d, lambda m: m.update(classes=list("abcdef"))), "classes"),
    "three classes": (lambda d: _edit_manifest(d, lambda m: m.update(classes=list("abc"))), "classes"),
    "300 classes": (lambda d: _edit_manifest(d, lambda m: m.update(classes=[str(i) for i in range(300)])),
                    "1 to 255"),
    "other sigma": (lambda d: _edit_manifest(d, lambda m: m.update(sigma=0.5)), "built for sigma 0.25"),
    "sigma a string": (lambda d: _edit_manifest(d, lambda m: m.update(sigma="0.25")), "field sigma"),
    "sigma negative": (lambda d: _edit_manifest(d, lambda m: m.update(sigma=-1)), "field sigma"),
    "batch sizes a string": (lambda d: _edit_manifest(d, lambda m: m.update(batch_sizes="1,8,32")),
                             "field batch_sizes"),
    "files a list": (lambda d: _edit_manifest(d, lambda m: m.update(files=["model.onnx"])), "field files"),
    "tools null": (lambda d: _edit_manifest(d, lambda m: m.update(tools=None)), "field tools"),
    "graphs missing": (lambda d: _edit_manifest(d, lambda m: m.pop("graphs")), "graphs"),
    "graph outside the directory": (lambda d: _edit_manifest(d, lambda m: m["graphs"].update(fused="../x.onnx")),
                                    "field graphs"),
    "graph not hashed": (lambda d: _edit_manifest(d, lambda m: m["graphs"].update(fused="other.onnx")),
                         "field graphs"),
    "segmenter graph as model": (_swap_graph, "tensor(float)"),
    "manifest empty": (lambda d: (d / "manifest.json").write_text(""), "not valid JSON"),
    "manifest binary": (lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe\x00\x01"), "not valid JSON"),
    "manifest a list": (lambda d: (d / "manifest.json").write_text("[]"), "JSON object"),
    "manifest a directory": (_manifest_is_a_directory, "cannot read"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_wrong_manifest(case, engine_dir, files, tmp_path):
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    breaker, needle = BAD_MANIFESTS[case]
    d = _copy_engine(engine_dir, tmp_path / "engine")
    breaker(d)
    with pytest.raises(CertsegError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        CertifiedSegmenter.load(d)
    out = tmp_path / "mask.png"
    r = CliRunner().invoke(main, ["certify", str(files["png"]), "--engine", str(d), "--out", str(out), *FAST])
    _one_line_error(r, needle)
    assert not out.exists()


@FEW
@given(name=st.sampled_from(["model.onnx", "segmenter.onnx", "manifest.json"]), cut=st.floats(0, 0.999),
       junk=st.booleans())
def test_truncated_or_garbled_engine_files(engine_dir, tmp_path_factory, name, cut, junk):
    """Truncated or overwritten with junk (and re-hashed, so that only the file itself is wrong): refused in one
    CertsegError at load, or for the segmenter graph (loaded on first use) at segment()."""
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    d = _copy_engine(engine_dir, tmp_path_factory.mktemp("e") / "engine")
    data = (d / name).read_bytes()
    data = np.random.default_rng(int(cut * 1e6)).bytes(max(1, int(len(data) * cut))) if junk else \
        data[:int(len(data) * cut)]
    (d / name).write_bytes(data)
    if name != "manifest.json":
        _rehash(d, name)
    try:
        seg = CertifiedSegmenter.load(d)
        seg.segment(np.full((1, 128, 128), 0.5, np.float32))
    except CertsegError:
        pass
    else:
        pytest.fail(f"{name} cut to {len(data)} bytes was accepted")
    finally:
        shutil.rmtree(d.parent)


# ---------------------------------------------------------------------------------- the Python API


def _arrays(max_side=6):
    dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.uint8, np.int64, np.bool_,
                              np.complex64])
    shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=max_side)
    return dtypes.flatmap(lambda dt: hnp.arrays(dt, shapes, elements=_elements(dt)))


def _elements(dtype):
    if np.dtype(dtype).kind == "f":
        return st.one_of(st.floats(-2, 3, width=np.dtype(dtype).itemsize * 8),
                         st.sampled_from([np.nan, np.inf, -np.inf]))
    return None


@FEW
@given(x=_arrays(), channels=st.sampled_from([1, 3]))
def test_check_input_returns_a_valid_image_or_input_error(x, channels):
    from certseg_rt.runtime.sampling import check_input

    try:
        y = check_input(x, channels)
    except InputError:
        return
    assert y.dtype == np.float32 and y.ndim == 3 and y.shape[0] == channels and y.flags.c_contiguous
    assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


@FEW
@given(x=st.one_of(_arrays(), *(hnp.arrays(np.float32, st.sampled_from([(1, 128, 128), (128, 128), (3, 128, 128)]),
                                           elements=st.floats(lo, hi, width=32)) for lo, hi in ((-0.5, 1.5), (0, 1)))))
def test_engine_certify_gives_a_certificate_or_a_certseg_error(engine_dir, x):
    seg = _segmenter(engine_dir)
    try:
        cert = seg.certify(x, n0=1, n=2, alpha=0.5)
    except CertsegError:
        return
    assert cert.labels.shape == (128, 128) and cert.labels.dtype == np.uint8


_SEGMENTERS = {}


def _segmenter(engine_dir):
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    if engine_dir not in _SEGMENTERS:
        _SEGMENTERS[engine_dir] = CertifiedSegmenter.load(engine_dir, batch_size=2)
    return _SEGMENTERS[engine_dir]


@pytest.mark.parametrize("kwargs,needle", [({"n0": 0}, "n0"), ({"n": 2**31}, "n="), ({"tau": float("nan")}, "tau"),
                                           ({"alpha": 1.0}, "alpha"), ({"seed": -1}, "seed"),
                                           ({"correction": "none"}, "correction"), ({"sigma": 0.3}, "sigma")])
def test_engine_certify_parameters(engine_dir, phantom, kwargs, needle):
    with pytest.raises(CertsegError if "sigma" in kwargs else ValueError, match=needle):
        _segmenter(engine_dir).certify(phantom.image, **kwargs)


def _count_arrays():
    dtypes = st.sampled_from([np.int8, np.uint8, np.int32, np.int64, np.uint64, np.float64, np.bool_, "m8[s]"])
    shapes = st.one_of(hnp.array_shapes(min_dims=3, max_dims=3, min_side=0, max_side=4),
                       hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3),
                       st.just((256, 1, 1)))
    return st.tuples(dtypes, shapes).flatmap(
        lambda ds: st.tuples(hnp.arrays(ds[0], ds[1]), hnp.arrays(ds[0], ds[1])))


@FEW
@given(pair=_count_arrays(), n=st.integers(-1, 2**32))
def test_certify_from_counts_random_arrays_work_or_value_error(pair, n):
    from certseg_rt import certify_from_counts

    counts0, counts = pair
    try:
        cert = certify_from_counts(counts0, counts, n=n, sigma=0.25, tau=0.75, alpha=0.01)
    except ValueError:
        return
    assert cert.labels.shape == counts.shape[1:] and cert.labels.dtype == np.uint8


@FEW
@given(classes=st.integers(1, 6), height=st.integers(1, 5), width=st.integers(1, 5), n0=st.integers(1, 20),
       n=st.integers(1, 200), seed=st.integers(0, 2**32))
def test_certify_from_valid_counts_certifies_only_candidates(classes, height, width, n0, n, seed):
    from certseg_rt import ABSTAIN, certify_from_counts

    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(classes), size=(height, width))
    draw = lambda k: np.moveaxis(np.array([[rng.multinomial(k, p[i, j]) for j in range(width)]
                                           for i in range(height)]), -1, 0).astype(np.int32)
    counts0, counts = draw(n0), draw(n)
    cert = certify_from_counts(counts0, counts, n=n, sigma=0.25, tau=0.6, alpha=0.1)
    candidate = np.argmax(counts0, axis=0)
    assert ((cert.labels == ABSTAIN) | (cert.labels == candidate)).all()


@FEW
@given(data=st.binary(min_size=0, max_size=2000),
       suffix=st.sampled_from([".png", ".jpg", ".tif", ".npy", ".bmp", ""]),
       header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\x93NUMPY\x01\x00", b"II*\x00", b"\xff\xd8\xff"]))
def test_read_image_random_bytes(tmp_path_factory, data, suffix, header):
    from certseg_rt.io import read_image

    path = tmp_path_factory.mktemp("bytes") / f"image{suffix}"
    path.write_bytes(header + data)
    try:
        x = read_image(path)
    except InputError:
        return
    assert x.dtype == np.float32 and x.ndim == 3 and np.isfinite(x).all() and 0 <= x.min() <= x.max() <= 1


# ------------------------------------------------------------------------------------------ kernels


@FEW
@given(labels=_arrays(max_side=4), counts=_arrays(max_side=4))
def test_accumulate_votes_bad_arrays(labels, counts):
    """Both implementations take the same inputs: each refuses with the same error type (ValueError or
    TypeError) exactly where the other does, and where both accept they count the same votes."""
    from certseg_rt import kernels
    from certseg_rt._ext_loader import ext

    results = []
    for impl in (kernels,) + ((ext,) if ext is not None else ()):
        c = np.array(counts, copy=True)
        try:
            impl.accumulate_votes(labels, c)
            results.append(c)
        except (ValueError, TypeError) as error:
            results.append(type(error))
    if len(results) == 2:
        numpy_result, compiled_result = results
        assert isinstance(numpy_result, type) == isinstance(compiled_result, type), (
            f"numpy {'refused' if isinstance(numpy_result, type) else 'accepted'} and the extension "
            f"{'refused' if isinstance(compiled_result, type) else 'accepted'} labels {labels.dtype} {labels.shape}, "
            f"counts {counts.dtype} {counts.shape}")
        if isinstance(numpy_result, type):
            assert numpy_result is compiled_result
        else:
            assert np.array_equal(numpy_result, compiled_result)


@FEW
@given(seed=st.integers(-2, 2**64 + 2), first=st.integers(-2, 2**64 + 2), sigma=st.floats(0, 2),
       shape=st.sampled_from([(1, 4, 4), (3, 2, 2)]))
def test_fill_noisy_refuses_out_of_range_counters(seed, first, sigma, shape):
    from certseg_rt import kernels
    from certseg_rt._ext_loader import ext

    x = np.full(shape, 0.5, np.float32)
    outs = []
    for impl in (kernels,) + ((ext,) if ext is not None else ()):
        out = np.empty((2, *shape), np.float32)
        try:
            impl.fill_noisy(x, sigma, seed, first, out)
            outs.append(out)
        except (ValueError, TypeError):
            outs.append(None)
    valid = 0 <= seed < 2**64 and 0 <= first <= 2**64 - 2  # two samples: first and first + 1
    assert [o is not None for o in outs] == [valid] * len(outs)
    if len(outs) == 2 and outs[0] is not None and outs[1] is not None:
        assert np.array_equal(outs[0], outs[1])


def _word_lists(size):
    words = st.one_of(st.integers(-2, 2**33), st.floats(allow_nan=True), st.booleans(), st.integers(0, 2**32 - 1))
    return st.lists(words, min_size=size - 1, max_size=size + 1)


@FEW
@given(counter=_word_lists(4), key=_word_lists(2))
def test_philox_refuses_bad_words(counter, key):
    """Exactly 4 counter words and 2 key words, each an integer in [0, 2**32), else ValueError: no float is
    truncated ([0.5, 0.9, 0, 0] used to give the output of [0, 0, 0, 0]), no bool, nothing wraps modulo 2**32.
    A valid call returns what the numpy reference returns (the compiled generator, where built, must agree)."""
    from certseg_rt import kernels, philox4x32

    def valid(words, size):
        return len(words) == size and all(type(w) is int and 0 <= w < 2**32 for w in words)

    if valid(counter, 4) and valid(key, 2):
        r = philox4x32(counter, key)
        assert r.dtype == np.uint32 and r.shape == (4,)
        assert np.array_equal(r, kernels.philox4x32(np.array(counter, np.uint32), np.array(key, np.uint32)))
    else:
        with pytest.raises(ValueError, match="words"):
            philox4x32(counter, key)


@pytest.mark.parametrize("counter, key", [([0.5, 0.9, 0, 0], [0, 0]), ([0, 0, 0, 0], [0.0, 0]), ([-1, 0, 0, 0], [0, 0]),
                                          ([2**32, 0, 0, 0], [0, 0]), ([0, 0, 0, 0], [True, 0]),
                                          (np.zeros(4), [0, 0]), ([0, 0, 0, 0], np.array([-1, 0], np.int64)),
                                          ([0, 0, 0], [0, 0]), ([0, 0, 0, 0], [0, 0, 0]), ([0, 0, 0, 0], [None, 0])])
def test_philox_refuses_each_kind_of_bad_word(counter, key):
    from certseg_rt import philox4x32

    with pytest.raises(ValueError, match="words"):
        philox4x32(counter, key)


# ------------------------------------------------------------------------------------------- faults


def test_interrupted_evaluate_keeps_finished_records_and_resumes(tmp_path):
    data, out = tmp_path / "data", tmp_path / "results"
    assert CliRunner().invoke(main, ["make-phantoms", str(data), "--count", "4"]).exit_code == 0
    args = ["evaluate", str(data), "--out", str(out), *EVAL_FAST[:3], "60", *EVAL_FAST[4:]]
    # A shell that starts pytest in the background (`cmd &`) ignores SIGINT, and the child would inherit
    # that; restore the default so Python installs its KeyboardInterrupt handler, as in a terminal.
    proc = subprocess.Popen([sys.executable, "-m", "certseg_rt.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list((out / "records").rglob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "evaluate finished (or failed) before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "interrupted" in stderr and "resume" in stderr
    records = sorted((out / "records").rglob("*.json"))
    assert 1 <= len(records) < 4
    for p in records:
        assert json.loads(p.read_text())["image"] == p.stem  # intact
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    stamps = {p: p.stat().st_mtime_ns for p in records}
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert {p: p.stat().st_mtime_ns for p in records} == stamps  # finished images were not redone
    assert json.loads((out / "summary.json").read_text())["overall"][0]["images"] == 4


def test_unreadable_record_is_redone(files, tmp_path):
    out = tmp_path / "results"
    args = ["evaluate", str(files["dataset"]), "--out", str(out), *EVAL_FAST]
    assert CliRunner().invoke(main, args).exit_code == 0
    record = sorted((out / "records").rglob("*.json"))[0]
    record.write_text('{"image": "trunc')
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert json.loads(record.read_text())["image"] == record.stem


def test_full_disk_is_one_line_and_leaves_no_temporary_file(files, tmp_path, monkeypatch):
    import errno
    import pathlib

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(pathlib.Path, "write_text", full)
    out = tmp_path / "results"
    r = CliRunner().invoke(main, ["evaluate", str(files["dataset"]), "--out", str(out), *EVAL_FAST])
    _one_line_error(r, "No space left on device")
    assert not [p for p in out.rglob("*") if p.is_file()]
