"""The CUDA kernels compile and link (nvcc) wherever nvcc exists, CI included: CUDA code that does not
compile fails the tests.  They cannot run here (no GPU); their per-element bodies are the ones the CPU
tests check, since both call the same host/device functions (cpp_ext/include/certseg/kernels.h)."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import certseg_rt

CPP_EXT = Path(__file__).resolve().parents[1] / "cpp_ext"


@pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("cmake") is None,
                    reason="nvcc or cmake not on PATH: the CUDA sources cannot be compiled here")
def test_cuda_sources_compile_and_link(tmp_path):
    build = tmp_path / "cuda"
    for cmd in (["cmake", "-S", str(CPP_EXT), "-B", str(build), "-DCERTSEG_CUDA=ON", "-DCERTSEG_BUILD_PYTHON=OFF",
                 "-DCERTSEG_BUILD_EXAMPLES=ON"],
                ["cmake", "--build", str(build), "--parallel", "2"]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert any(build.rglob("cuda.cu.o")), "the CUDA translation unit was not compiled"
    # The example links against the CUDA-enabled library and runs its CPU path without a GPU.
    r = subprocess.run([str(build / "certify_counts")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_public_philox_known_answers():
    # Random123's known-answer vectors, through the public API (compiled or numpy, whichever is installed).
    assert certseg_rt.philox4x32([0, 0, 0, 0], [0, 0]).tolist() == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert certseg_rt.philox4x32([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]
                                 ).tolist() == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]
    with pytest.raises(ValueError, match="4 uint32"):
        certseg_rt.philox4x32(np.zeros(3), [0, 0])
