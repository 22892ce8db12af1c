"""The C API without Python: build cpp_ext/ standalone with CMake (CERTSEG_BUILD_PYTHON=OFF), run the
example program examples/certify_counts.c and check its certificate against certseg_rt.stats; call the
shared library through ctypes for the noise, vote and error paths.

Skipped when cmake or a C/C++ compiler is missing.  The build (CPU only) takes a few seconds.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from certseg_rt import kernels, stats

CPP_EXT = Path(__file__).resolve().parents[1] / "cpp_ext"


def _missing_tools() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    if not any(shutil.which(cc) for cc in (os.environ.get("CC", "cc"), "cc", "gcc", "clang")):
        return "no C compiler (cc/gcc/clang) on PATH"
    if not any(shutil.which(cxx) for cxx in (os.environ.get("CXX", "c++"), "c++", "g++", "clang++")):
        return "no C++ compiler (c++/g++/clang++) on PATH"
    if not sys.platform.startswith("linux"):
        return "the standalone build test runs on Linux only"
    return None


pytestmark = pytest.mark.skipif(_missing_tools() is not None, reason=str(_missing_tools()))


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("certseg_capi")
    configure = ["cmake", "-S", str(CPP_EXT), "-B", str(build), "-DCERTSEG_BUILD_PYTHON=OFF", "-DCERTSEG_CUDA=OFF",
                 "-DCERTSEG_BUILD_EXAMPLES=ON", "-DCERTSEG_BUILD_SHARED=ON", "-DCMAKE_BUILD_TYPE=Release"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    for command in (configure, ["cmake", "--build", str(build), "--parallel", "2"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return build


def _run_example(build_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(build_dir / "certify_counts"), *args], capture_output=True, text=True, timeout=60)


def _parse(stdout: str, num_classes: int):
    summary, table, rows = {}, {}, []
    for line in stdout.splitlines():
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0] == "pixel":
            # pixel <p> counts0 <C> counts <C> label <l> pvalue <v>
            c0 = [int(v) for v in words[3:3 + num_classes]]
            c = [int(v) for v in words[4 + num_classes:4 + 2 * num_classes]]
            rows.append((int(words[1]), c0, c, int(words[-3]), float(words[-1])))
        elif words[0] == "table":
            table[int(words[1])] = float(words[2])
        elif words[0] == "class":
            summary[("class", int(words[1]))] = int(words[2])
        else:
            summary[words[0]] = int(words[1])
    rows.sort()
    counts0 = np.array([r[1] for r in rows], dtype=np.int32).T
    counts = np.array([r[2] for r in rows], dtype=np.int32).T
    labels = np.array([r[3] for r in rows], dtype=np.uint8)
    pvalues = np.array([r[4] for r in rows])
    return summary, table, counts0, counts, labels, pvalues


@pytest.mark.parametrize("args", [
    dict(classes=4, pixels=4096, n0=10, n=100, tau=0.75, alpha=0.001, correction="holm", seed=1),
    dict(classes=4, pixels=4096, n0=10, n=100, tau=0.75, alpha=0.001, correction="bonferroni", seed=1),
    dict(classes=3, pixels=3001, n0=20, n=500, tau=0.9, alpha=0.01, correction="holm", seed=7),
    dict(classes=2, pixels=999, n0=5, n=60, tau=0.6, alpha=0.05, correction="bonferroni", seed=3),
])
def test_example_agrees_with_python_stats(build_dir, args):
    argv = [word for key, value in args.items() for word in (f"--{key}", str(value))]
    result = _run_example(build_dir, *argv, "--dump", "--table")
    assert result.returncode == 0, result.stderr
    assert "6627e8d5 e169c58d bc57ac4c 9b00dbd8 (Random123" in result.stdout  # the example's own Philox check
    summary, table, counts0, counts, labels, pvalues = _parse(result.stdout, args["classes"])
    n, tau, alpha, correction = args["n"], args["tau"], args["alpha"], args["correction"]
    assert counts.shape == (args["classes"], args["pixels"])
    assert (counts0.sum(axis=0) == args["n0"]).all() and (counts.sum(axis=0) == n).all()

    candidate = np.argmax(counts0, axis=0)
    k = np.take_along_axis(counts, candidate[None], axis=0)[0]
    ref_pvalues, reject = stats.reject_counts(k, n, tau, alpha, correction)
    ref_labels = np.where(reject, candidate, 255).astype(np.uint8)
    assert np.array_equal(labels, ref_labels)
    np.testing.assert_allclose(pvalues, ref_pvalues, rtol=1e-12, atol=0)
    np.testing.assert_allclose([table[i] for i in range(n + 1)], stats.upper_tail_table(n, tau), rtol=1e-12, atol=0)

    certified = int(np.sum(labels != 255))
    assert 0 < certified < labels.size  # the synthetic image exercises both outcomes
    assert summary["certified"] == certified and summary["abstained"] == labels.size - certified
    for c in range(args["classes"]):
        assert summary[("class", c)] == int(np.sum(labels == c))


def test_example_is_deterministic(build_dir):
    first, second = _run_example(build_dir, "--dump"), _run_example(build_dir, "--dump")
    assert first.returncode == 0 and first.stdout == second.stdout
    assert "certified" in first.stdout


def test_example_reports_errors(build_dir):
    usage = _run_example(build_dir, "--classes", "0")
    assert usage.returncode == 2 and "usage" in usage.stderr
    bad = _run_example(build_dir, "--tau", "1.5")
    assert bad.returncode == 1 and "tau must lie strictly between 0 and 1" in bad.stderr


# ---- the shared library through ctypes ----------------------------------------------------------------

@pytest.fixture(scope="module")
def lib(build_dir):
    path = build_dir / "libcertseg.so"
    if not path.exists():
        pytest.skip(f"{path.name} was not built")
    lib = ctypes.CDLL(str(path))
    p, u64, size = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t
    lib.certseg_last_error.restype = ctypes.c_char_p
    lib.certseg_philox4x32.argtypes = [p, p, p]
    lib.certseg_philox4x32.restype = None
    lib.certseg_fill_noisy.argtypes = [p, size, ctypes.c_float, u64, u64, size, ctypes.c_float, ctypes.c_float, p]
    lib.certseg_gaussian_noise.argtypes = [u64, u64, size, size, p]
    lib.certseg_accumulate_votes.argtypes = [p, size, size, p, size]
    lib.certseg_certify_counts.argtypes = [p, p, size, size, ctypes.c_int64, ctypes.c_double, ctypes.c_double,
                                           ctypes.c_int, p, p]
    lib.certseg_cuda_fill_noisy.argtypes = [p, size, ctypes.c_float, u64, u64, size, ctypes.c_float,
                                            ctypes.c_float, p, p]
    lib.certseg_set_num_threads.argtypes = [ctypes.c_int]
    return lib


def test_capi_philox_known_answer(lib):
    counter = np.array([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], dtype=np.uint32)
    key = np.array([0xA4093822, 0x299F31D0], dtype=np.uint32)
    out = np.zeros(4, dtype=np.uint32)
    lib.certseg_philox4x32(counter.ctypes.data, key.ctypes.data, out.ctypes.data)
    assert out.tolist() == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_capi_noise_equals_numpy(lib):
    x = np.random.default_rng(0).random(1027, dtype=np.float32)
    out = np.empty((5, 1027), dtype=np.float32)
    assert lib.certseg_fill_noisy(x.ctypes.data, 1027, 0.25, 2**63 + 9, 2**32 - 2, 5, 1.0, 0.0, out.ctypes.data) == 0
    assert np.array_equal(out, kernels.fill_noisy(x, 0.25, 2**63 + 9, 2**32 - 2, np.empty_like(out)))
    noise = np.empty((3, 10), dtype=np.float32)
    assert lib.certseg_gaussian_noise(5, 2**40, 3, 10, noise.ctypes.data) == 0
    assert np.array_equal(noise, kernels.gaussian_noise(5, 2**40, 3, 10))


def test_capi_error_codes_and_messages(lib):
    labels = np.full((2, 8), 6, dtype=np.uint8)
    counts = np.zeros((3, 8), dtype=np.int32)
    assert lib.certseg_accumulate_votes(labels.ctypes.data, 2, 8, counts.ctypes.data, 3) == 2  # CERTSEG_ERR_LABEL
    assert b"label 6 out of range for 3 classes" in lib.certseg_last_error()
    assert (counts == 0).all()
    good = np.zeros((2, 4), dtype=np.int32)
    good[0] = 10
    out_labels, out_p = np.zeros(4, dtype=np.uint8), np.zeros(4)
    args = (good.ctypes.data, good.ctypes.data, 2, 4)
    assert lib.certseg_certify_counts(*args, 0, 0.75, 0.01, 0, out_labels.ctypes.data, out_p.ctypes.data) == 1
    assert b"n must be >= 1" in lib.certseg_last_error()
    assert lib.certseg_certify_counts(*args, 10, 0.75, 0.01, 7, out_labels.ctypes.data, out_p.ctypes.data) == 1
    assert b"correction" in lib.certseg_last_error()
    assert lib.certseg_certify_counts(*args, 10, 0.75, 0.01, 1, out_labels.ctypes.data, out_p.ctypes.data) == 0
    assert lib.certseg_last_error() == b""
    assert lib.certseg_set_num_threads(-2) == 1
    x = np.zeros(4, dtype=np.float32)
    assert lib.certseg_fill_noisy(x.ctypes.data, 4, 0.25, 0, 2**64 - 1, 2, 1.0, 0.0, x.ctypes.data) == 1
    # Built with CERTSEG_CUDA=OFF: the CUDA entry points exist and say so.
    assert lib.certseg_cuda_compiled() == 0
    assert lib.certseg_cuda_device_count() == 0
    assert lib.certseg_cuda_fill_noisy(8, 4, 0.25, 0, 0, 1, 1.0, 0.0, 8, None) == 4  # CERTSEG_ERR_NO_CUDA
    assert b"without CUDA" in lib.certseg_last_error()
