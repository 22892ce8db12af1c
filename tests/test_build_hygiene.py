"""Builds that fit in memory and clean up: parity within the engine's batch range and a memory budget, staging
folders of killed builds removed by the next build, and no traceback or library log on the user's terminal."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from certseg_rt.cli import main

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
TESTS = os.path.dirname(__file__)


def _attention_denoiser(path, size=64):
    """A diffusers UNet2DModel with 8-head self-attention at half resolution: ONNX Runtime materialises its
    attention matrices (8 x (size/2)^4 floats per sample, twice), as it does for published DDPMs."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                norm_num_groups=8, attention_head_dim=4).save_pretrained(path / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(path / "scheduler")
    return path


@pytest.mark.slow  # ~20 s of CPU: the attention denoiser's parity, chunked (the memory failure it reproduces)
def test_parity_stays_within_the_memory_budget(tmp_path):
    denoiser = _attention_denoiser(tmp_path / "attn")
    budget = 160  # MiB; 16 samples at once (the old check) needed ~16 x 70 MiB in ONNX Runtime
    r = CliRunner().invoke(main, ["build-engine", "--denoiser", str(denoiser), "--image-size", "64",
                                  "--batch-sizes", "1,16,64", "--memory-budget", str(budget), "--json",
                                  "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    batching = json.loads(r.stdout)["parity"]["batching"]
    assert batching["budget_mib"] == budget and batching["batch_range"] == [1, 64]
    graphs = {k: v for k, v in batching["runners"].items() if k in ("model.onnx", "denoiser.onnx")}
    per_sample = max(v["per_sample_mib"] for v in graphs.values())
    assert per_sample > 40, batching  # the attention matrices are there to measure
    assert all(1 <= v["chunk"] <= budget // v["per_sample_mib"] for v in graphs.values()), batching
    assert batching["peak_rss_growth_mib"] <= 1.3 * budget < 16 * per_sample, batching


def test_parity_chunks_stay_inside_the_batch_range():
    from certseg_rt.export.parity import BatchPlan

    seen = []

    def run(x):
        seen.append(len(x))
        return x[:, 0] * 2

    x = np.arange(11, dtype=np.float32)[:, None]
    fixed = BatchPlan.for_engine(fixed_batch=4, budget=1 << 40)
    assert np.array_equal(fixed.run("g", run, x), x[:, 0] * 2) and seen == [4, 4, 4]  # last padded
    seen.clear()
    ranged = BatchPlan.for_engine((3, 5, 6), budget=1 << 40)
    assert np.array_equal(ranged.run("g", run, x[:10]), x[:10, 0] * 2)
    assert seen[0] == 3 and all(3 <= b <= 6 for b in seen) and sum(seen) >= 10
    seen.clear()
    tiny = BatchPlan.for_engine((2, 8, 8), budget=1)  # a budget below one sample: the engine's minimum batch
    tiny.run("g", run, x)
    assert all(b == 2 for b in seen)


def test_stale_staging_rules(tmp_path):
    from certseg_rt.export.build import remove_stale_staging

    out = tmp_path / "engine"
    dead = 2 ** 22 + 12345  # above pid_max's default: no such process
    (tmp_path / f".engine.building-{dead}-abc").mkdir()
    (tmp_path / ".engine.building-xyz12345").mkdir()  # an older release's name (no pid)
    (tmp_path / f".engine.building-{os.getppid()}-live").mkdir()  # a build that is running
    (tmp_path / f".engine.old-{dead}").mkdir()
    (tmp_path / f".engine.old-{dead}" / "manifest.json").write_text("{}")
    (tmp_path / ".other.building-1-x").mkdir()
    remove_stale_staging(out)
    # the previous engine, moved aside by a build killed before its replacement landed, is put back
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".engine.building-{os.getppid()}-live", ".other.building-1-x", "engine"])


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "certseg_rt.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": TESTS})


def test_killed_build_is_cleaned_up_by_the_next_and_logs_stay_off_the_terminal(tmp_path):
    """SIGKILL a build mid-way, then build again into the same --out: the stale staging folder goes, the engine
    lands.  The second build is a scripted MONAI SegResNet, whose TorchScript-exporter graph ONNX Runtime
    rejects: the fallback to the dynamo exporter prints notes, never ONNX Runtime's or torch's own logs."""
    from monai.networks.nets import SegResNet

    seg = tmp_path / "segresnet.pt"
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(SegResNet(spatial_dims=2, in_channels=1, out_channels=4, init_filters=8,
                                              blocks_down=(1, 2, 2), blocks_up=(1, 1)).eval()), str(seg))
    out = tmp_path / "engine"
    common = ["--image-size", "64", "--out", out, "--batch-sizes", "1,2,2"]
    first = _cli("build-engine", *common)
    deadline = time.time() + 120
    while time.time() < deadline and not any((p / "model.onnx").exists()
                                             for p in tmp_path.glob(".engine.building-*")):
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    assert list(tmp_path.glob(".engine.building-*")) and not out.exists()
    second = _cli("build-engine", *common, "--segmenter", seg, "--denoiser", "none")
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine", "segresnet.pt"]
    assert "dynamo exporter" in stderr
    for noise in ("Traceback", "onnxruntime:", "torchvision", "Warning"):
        assert noise not in stderr, stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["graphs_made"]["segmenter"]["exporter"] == "dynamo" and m["batch_sizes"]["fixed"] is True
