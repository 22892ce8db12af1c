"""The compiled-model cache (runtime/model_cache.py) with OpenVINO engines: a miss compiles and stores, a hit imports
and certifies bit for bit as a fresh compile; a damaged entry, an entry of another OpenVINO release and another
build's key are never used; a folder that cannot be written still serves its entries and says so once.

Engines are conftest's ``openvino_engines`` (128x128, batch 1..8..32): calls of 3 and 20 samples run at static
batches 3 and 7, so each open compiles (or imports) two models."""
import errno
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
ov = pytest.importorskip("openvino")

CALLS = (3, 20)
PARAMS = {"n0": 3, "n": 20, "tau": 0.6, "alpha": 0.5, "seed": 4}  # loose enough that most pixels certify


def _open(engine, cache_dir, calls=CALLS):
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    return CertifiedSegmenter.load(engine, batch_size=8, cache_dir=cache_dir, calls=calls)


def _entries(root):
    folder = root / "openvino"
    return sorted(folder.glob("*.blob")) if folder.is_dir() else []


def _stats(seg):
    cache = seg.backend.cache
    return cache.hits, cache.misses, cache.rejected


@pytest.fixture(scope="module")
def engine(openvino_engines):
    """bf16 where the CPU runs it natively (reduced precision picks its kernels per shape), else fp32."""
    return openvino_engines.get("bf16", openvino_engines["fp32"])


@pytest.fixture(scope="module")
def want(engine, phantom):
    """The engine's certificate compiled without a cache."""
    return _open(engine, False).certify(phantom.image, **PARAMS)


@pytest.fixture(scope="module")
def populated(engine, tmp_path_factory):
    """A cache folder holding the entries of the engine's two calls (tests copy it)."""
    root = tmp_path_factory.mktemp("populated")
    assert _stats(_open(engine, root)) == (0, 2, 0)
    return root


@pytest.fixture
def cache(populated, tmp_path):
    import shutil

    return shutil.copytree(populated, tmp_path / "cache")


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    from certseg_rt.runtime import model_cache

    monkeypatch.setattr(model_cache, "_noted", set())


def _same_certificate(a, b):
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.pvalues, b.pvalues) and a.radius == b.radius


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_hit_certifies_bit_for_bit_as_a_fresh_compile(openvino_engines, phantom, tmp_path, precision):
    if precision not in openvino_engines:
        pytest.skip("this CPU has no native bf16")
    engine = openvino_engines[precision]
    uncached = _open(engine, False)
    assert uncached.backend.cache is None
    want = uncached.certify(phantom.image, **PARAMS)
    counts = uncached.backend.sample_counts(phantom.image, 20, seed=4, offset=3)

    miss = _open(engine, tmp_path)
    assert _stats(miss) == (0, 2, 0) and len(_entries(tmp_path)) == 2  # compiled, and stored
    hit = _open(engine, tmp_path)
    assert _stats(hit) == (2, 0, 0) and len(_entries(tmp_path)) == 2  # imported
    for seg in (miss, hit):
        _same_certificate(seg.certify(phantom.image, **PARAMS), want)
        assert np.array_equal(seg.backend.sample_counts(phantom.image, 20, seed=4, offset=3), counts)
    assert hit.backend.record["inference_precision"] == uncached.backend.record["inference_precision"]
    # The opened calls compile nothing in the certify: both sizes are the ones kept.
    assert sorted(hit.backend._requests) == [3, 7]


def test_the_key_holds_every_input_of_the_compile(engine, cache, tmp_path, monkeypatch):
    """The same IR at another precision, other threads, another OpenVINO build: each its own entries (OpenVINO's
    own CACHE_DIR served one blob to the f32 and the bf16 compile of an IR)."""
    from engine_helpers import copy_engine, edit_manifest

    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    assert len(_entries(cache)) == 2
    other = copy_engine(engine, tmp_path / "other-precision")
    hint = {"f32": "bf16", "bf16": "f32"}[json.loads((engine / "manifest.json").read_text())["openvino"]
                                          ["inference_precision"]]
    if hint == "bf16" and "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        hint = None
    if hint is not None:
        edit_manifest(other, lambda m: (m.update(precision={"f32": "fp32", "bf16": "bf16"}[hint]),
                                        m["openvino"].update(inference_precision=hint)))
        assert _stats(_open(other, cache)) == (0, 2, 0)
    seg = CertifiedSegmenter.load(engine, batch_size=8, threads=1, cache_dir=cache, calls=CALLS)
    assert _stats(seg) == (0, 2, 0)
    build = ov.get_version()
    monkeypatch.setattr(ov, "get_version", lambda: build.replace("-", "-1", 1))  # same release, another build
    assert _stats(_open(engine, cache)) == (0, 2, 0)
    monkeypatch.undo()
    assert _stats(_open(engine, cache)) == (2, 0, 0)


def _flip(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": lambda p, other: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "a byte of the model flipped": lambda p, other: _flip(p, p.stat().st_size // 2),
    "a byte of the checksum flipped": lambda p, other: _flip(p, len(b"certseg-rt compiled model 1\n") + 3),
    "another entry's content": lambda p, other: p.write_bytes(other.read_bytes()),  # another key inside
    "empty": lambda p, other: p.write_bytes(b""),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_ignored_and_rebuilt(engine, phantom, want, cache, damage):
    first, other = _entries(cache)
    DAMAGE[damage](first, other)
    seg = _open(engine, cache)
    assert _stats(seg) == (1, 0, 1)  # one entry refused (and compiled again), the other imported
    _same_certificate(seg.certify(phantom.image, **PARAMS), want)
    assert _stats(_open(engine, cache)) == (2, 0, 0)  # rewritten whole
    assert not list((cache / "openvino").glob(".entry-*"))  # no temporary file left


def test_an_entry_of_another_openvino_release_is_refused_by_openvino_and_rebuilt(engine, phantom, want, cache):
    """An entry whose checksum is right but whose model another release exported (as if a cache folder were copied
    between installs): OpenVINO's own header check refuses it, and it is compiled again and overwritten."""
    from certseg_rt.runtime.model_cache import MAGIC, ModelCache

    path = _entries(cache)[0]
    data = path.read_bytes()
    line_end = data.index(b"\n", len(MAGIC))
    key_size = int(data[len(MAGIC):line_end].split()[2])
    key = data[line_end + 1:line_end + 1 + key_size].decode()
    payload = data[line_end + 1 + key_size:]
    here = ov.get_version().split("-")[0].encode()
    other = b"2025.9.9"[:len(here)].ljust(len(here), b"9")
    assert b"ov=" + here in payload[:200]  # the CPU plugin's header names the release that exported it
    ModelCache(cache, "openvino").write(key, payload.replace(b"ov=" + here, b"ov=" + other, 1))
    seg = _open(engine, cache)
    assert _stats(seg) == (1, 0, 1)
    _same_certificate(seg.certify(phantom.image, **PARAMS), want)
    assert _stats(_open(engine, cache)) == (2, 0, 0)


def _read_only(folder, monkeypatch):
    """chmod the folder read-only; running as root (permissions do not bind it), a stand-in for the refusal: the
    temporary file of a write fails with EACCES, as it would for another user."""
    for f in (folder, folder / "openvino"):
        if f.is_dir():
            f.chmod(0o555)
    if os.geteuid() == 0:
        import tempfile

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(tempfile, "mkstemp", refuse)


def test_a_read_only_cache_folder_serves_its_entries_and_says_once_it_keeps_nothing(engine, phantom, want, cache,
                                                                                      monkeypatch, capfd):
    entries = {p.name: p.stat().st_mtime_ns for p in _entries(cache)}
    capfd.readouterr()
    try:
        _read_only(cache, monkeypatch)
        seg = _open(engine, cache)
        assert _stats(seg) == (2, 0, 0) and capfd.readouterr().err == ""
        _same_certificate(seg.certify(phantom.image, **PARAMS), want)
        for calls in ((5, 30), (2, 40)):  # other static batches: compiled here, not kept
            seg = _open(engine, cache, calls=calls)
            assert seg.backend.cache.misses == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and err.startswith("note: cannot write the compiled-model cache")
        assert "--no-cache" in err
        assert {p.name: p.stat().st_mtime_ns for p in _entries(cache)} == entries
        _same_certificate(seg.certify(phantom.image, **PARAMS), want)
    finally:
        for f in (cache / "openvino", cache):
            f.chmod(0o755)


def test_an_unusable_cache_location_certifies_and_says_once(engine, phantom, want, tmp_path, capfd):
    """A cache path below a file cannot be created, whoever runs: the engine compiles, says so once."""
    (tmp_path / "file").write_text("not a folder")
    capfd.readouterr()
    for _ in range(2):
        seg = _open(engine, tmp_path / "file" / "cache")
        _same_certificate(seg.certify(phantom.image, **PARAMS), want)
    err = capfd.readouterr().err
    assert err.count("note: cannot write the compiled-model cache") == 1 and "Not a directory" in err


def test_where_the_cache_is(tmp_path, monkeypatch):
    from certseg_rt.runtime.model_cache import ENV, cache_root, default_root

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert default_root() == tmp_path / "xdg" / "certseg-rt"
    assert cache_root() == default_root() and cache_root(False) is None
    monkeypatch.setenv(ENV, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" and cache_root(tmp_path / "given") == tmp_path / "given"


def test_cli_cache_options(engine, tmp_path):
    """--cache-dir puts the entries there, --no-cache writes none, and the certificate is the same either way."""
    import json

    from click.testing import CliRunner

    from certseg_rt.cli import main
    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom
    from certseg_rt.io import write_png

    ph = make_phantom(HELD_OUT_SEEDS[2], size=128)
    write_png(tmp_path / "scan.png", (ph.image[0] * 255).round().astype(np.uint8))
    args = ["certify", str(tmp_path / "scan.png"), "--engine", str(engine), "--n0", "3", "--n", "20", "--batch-size",
            "8", "--json"]
    certs = []
    for extra in (["--cache-dir", str(tmp_path / "c")], ["--cache-dir", str(tmp_path / "c")], ["--no-cache"]):
        r = CliRunner().invoke(main, args + extra)
        assert r.exit_code == 0, r.output
        certs.append({k: v for k, v in json.loads(r.stdout).items() if k != "seconds"})
    assert certs[0] == certs[1] == certs[2]
    assert len(_entries(tmp_path / "c")) == 2
    r = CliRunner().invoke(main, args + ["--cache-dir", str(tmp_path / "c"), "--no-cache"])
    assert r.exit_code == 1 and "contradict" in r.output


def test_a_certify_process_writes_only_its_cache_and_its_mask(engine, tmp_path):
    """A whole `certseg-rt certify --engine` process, with HOME, the working folder and TMPDIR its own: afterwards
    files exist only in the cache folder (the default one, under HOME's platform cache) and at --out; the engine
    folder is unchanged."""
    import subprocess
    import sys

    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom
    from certseg_rt.io import write_png

    home, work, tmp, out = (tmp_path / d for d in ("home", "work", "tmp", "out"))
    for d in (home, work, tmp, out):
        d.mkdir()
    scan = out / "scan.png"
    write_png(scan, (make_phantom(HELD_OUT_SEEDS[3], size=128).image[0] * 255).round().astype(np.uint8))

    def listing(folder):
        return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))

    engine_before = listing(engine)
    env = {k: v for k, v in os.environ.items() if k not in ("CERTSEG_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), TMPDIR=str(tmp))
    r = subprocess.run([sys.executable, "-m", "certseg_rt.cli", "certify", str(scan), "--engine", str(engine),
                        "--n0", "3", "--n", "20", "--batch-size", "8", "--out", str(out / "mask.png")],
                       cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cache = home / ".cache" / "certseg-rt"
    assert len(_entries(cache)) == 2
    written = {p.relative_to(home) for p in home.rglob("*") if p.is_file()}
    assert all(p.parts[:2] == (".cache", "certseg-rt") for p in written), written
    assert sorted(p.name for p in out.iterdir()) == ["mask.png", "scan.png"]
    assert not any(work.iterdir()) and not any(tmp.iterdir())
    assert listing(engine) == engine_before
