"""The memory budget: sizes, the per-sample estimate, the batch fitted to a budget, and a 512x512 certify in 2 GB."""
import json
import subprocess
import sys

import numpy as np
import pytest

from certseg_rt.errors import CertsegError
from certseg_rt.runtime.memory import MemoryCosts, MemoryEstimate, fit_batch_size, parse_memory


@pytest.mark.parametrize("text,size", [("2G", 2 << 30), ("1.5GiB", 3 << 29), ("512M", 512 << 20), ("512mb", 512 << 20),
                                       ("2000000000", 2_000_000_000), (1 << 30, 1 << 30), (" 3 g ", 3 << 30)])
def test_parse_memory(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["lots", "2X", "-1G", "", "1e9", "G"])
def test_parse_memory_refuses_what_is_not_a_size(text):
    with pytest.raises(CertsegError, match="--max-memory"):
        parse_memory(text)


def test_parse_memory_refuses_a_budget_below_the_runtime_itself():
    with pytest.raises(CertsegError, match="64 MiB"):
        parse_memory("10M")


def test_fit_batch_size_is_the_largest_batch_that_fits():
    est = MemoryEstimate(fixed=1000, per_sample=100)
    assert fit_batch_size(est, 1550, 1, 16) == 5  # 1000 + 5 * 100 <= 1550 < 1000 + 6 * 100
    assert fit_batch_size(est, 1600, 1, 16) == 6
    assert fit_batch_size(est, 10**9, 1, 16) == 16  # never above the batch asked for
    assert fit_batch_size(None, 1, 1, 16) == 16  # an engine without the field memory: unbudgeted
    with pytest.raises(CertsegError, match="a batch of 4 needs") as e:
        fit_batch_size(est, 1350, 4, 16)
    assert "raise --max-memory" in str(e.value)


def test_memory_costs_estimate_from_a_manifest():
    costs = MemoryCosts(base_bytes=100, activation_factor=2.0, weights_factor=1.5)
    manifest = {"memory": {"activation_bytes_per_sample": 1000, "weights_bytes": 10},
                "input": {"channels": 2, "height": 4, "width": 5}, "classes": ["a", "b", "c"]}
    est = costs.estimate(manifest)
    pixels = 20
    assert est.per_sample == 2000 + pixels * (4 * 2 + 1)
    assert est.fixed == 100 + 15 + pixels * 3 * 4 * 2 + pixels * 8 * 8
    assert costs.estimate({**manifest, "memory": None}) is None


def test_peak_activation_bytes_counts_live_tensors_exactly():
    torch = pytest.importorskip("torch")
    from certseg_rt.export.memory import peak_activation_bytes

    torch.manual_seed(0)
    # conv out (4 x 8 x 8 float32 = 1024 B) is alive while relu writes its own output (1024 B); then conv's is freed,
    # and the second conv's output (2 x 8 x 8 = 512 B) joins relu's.
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    assert peak_activation_bytes(net, torch.rand(1, 1, 8, 8)) == 2048
    assert peak_activation_bytes(net, torch.rand(3, 1, 8, 8)) == 3 * 2048
    inplace = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(inplace=True))
    assert peak_activation_bytes(inplace, torch.rand(1, 1, 8, 8)) == 1024  # in place: no second buffer


def test_engine_batch_is_lowered_to_fit_the_budget(engine_dir):
    from certseg_rt.manifest import load_manifest
    from certseg_rt.runtime.backends.onnxruntime import MEMORY
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    est = MEMORY.estimate(load_manifest(engine_dir))
    budget = est.at(5) + est.per_sample // 2
    seg = CertifiedSegmenter.load(engine_dir, batch_size=16, max_memory=budget)
    assert seg.backend.batch_size == 5
    assert CertifiedSegmenter.load(engine_dir, batch_size=16, max_memory="16G").backend.batch_size == 16
    with pytest.raises(CertsegError, match="over the budget"):
        CertifiedSegmenter.load(engine_dir, max_memory=est.at(1) - 1)


def test_reference_batch_is_lowered_to_fit_the_budget(chest_dir):
    pytest.importorskip("torch")
    from certseg_rt.export.loaders import load_source
    from certseg_rt.export.memory import memory_profile
    from certseg_rt.runtime.backends import open_model
    from certseg_rt.runtime.backends.torch_eager import MEMORY

    source = load_source(chest_dir)
    est = MEMORY.estimate({"memory": memory_profile(source, 0.25), "classes": source.classes,
                           "input": {"channels": 1, "height": 128, "width": 128}})
    assert open_model(chest_dir, 0.25, batch_size=16, max_memory=est.at(3) + est.per_sample // 2).batch_size == 3
    assert open_model(chest_dir, 0.25, batch_size=16, max_memory="16G").batch_size == 16


CERTIFY_512 = """
import json, sys
from certseg_rt.bench.machine import peak_rss_mb
from certseg_rt.data import HELD_OUT_SEEDS
from certseg_rt.data.modalities import get_modality
from certseg_rt.runtime.segmenter import CertifiedSegmenter
seg = CertifiedSegmenter.load(sys.argv[1], batch_size=16, max_memory="2G")
image = get_modality("chest").make_phantom(HELD_OUT_SEEDS[0], 512).image
cert = seg.certify(image, n0=2, n=2 * seg.backend.batch_size + 1, alpha=0.1)
print(json.dumps({"batch": seg.backend.batch_size, "peak_mb": peak_rss_mb()}))
"""


@pytest.mark.slow
def test_512_certify_within_2_gb(tmp_path):
    """A 512x512 engine (ONNX Runtime, the default backend; batch 16 peaks at ~4.9 GB) certifies in a subprocess
    within --max-memory 2G: the batch is lowered, and the measured peak RSS stays under 2 GB.  Slow (~1 min here):
    building a 512x512 engine and running full batches at that size."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from click.testing import CliRunner

    from certseg_rt.cli import main

    out = tmp_path / "engine512"
    r = CliRunner().invoke(main, ["build-engine", "--image-size", "512", "--out", str(out)])
    assert r.exit_code == 0, r.output
    run = subprocess.run([sys.executable, "-c", CERTIFY_512, str(out)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert 1 <= got["batch"] < 16
    assert got["peak_mb"] * 2**20 < 2e9, got
    assert np.isfinite(got["peak_mb"])
