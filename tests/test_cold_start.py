"""bench --cold: the careful torch one-shot script computes the torch reference's labels, and the cold-start rows
run end to end (one paired round on the session's OpenVINO engine)."""
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom
    from certseg_rt.io import write_png

    path = tmp_path_factory.mktemp("cold") / "scan.png"
    write_png(path, (make_phantom(HELD_OUT_SEEDS[5], size=128).image[0] * 255).round().astype(np.uint8))
    return path


def test_torch_script_labels_are_the_torch_reference_s(scan, chest_dir, tmp_path):
    """In fp32 / NCHW the script's one-step denoise + segment is DenoiseSegment's on the same noisy batch."""
    from certseg_rt.bench.cold import TORCH_SCRIPT
    from certseg_rt.export.loaders import load_model_dir
    from certseg_rt.io import read_image

    out = tmp_path / "labels.npy"
    r = subprocess.run([sys.executable, str(TORCH_SCRIPT), str(scan), str(chest_dir), "--samples", "6",
                        "--precision", "fp32", "--layout", "nchw", "--labels-out", str(out)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.splitlines()[-1])
    assert report["samples"] == 6 and report["votes_total"] == 6 * 128 * 128
    assert "certseg_rt" not in r.stderr  # nothing of ours on its path (its own process, run by path)
    x = torch.from_numpy(read_image(scan, 1))[None]
    noisy = x + 0.25 * torch.randn((6, 1, 128, 128), generator=torch.Generator().manual_seed(0))
    model = load_model_dir(chest_dir).denoise_segment(0.25).eval()
    with torch.inference_mode():
        want = model(noisy).numpy()
    assert np.mean(np.load(out) == want) >= 0.999


@pytest.mark.slow
def test_bench_cold_runs_end_to_end(openvino_engines, tmp_path):
    """One paired round of every process kind, with few samples (the processes' start-up is what is exercised)."""
    from click.testing import CliRunner

    from certseg_rt.bench.cold import run, to_markdown
    from certseg_rt.cli import main

    r = CliRunner().invoke(main, ["bench", "--cold", "--sizes", "128", "--engine", str(openvino_engines["fp32"]),
                                  "--certseg-run", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "is not an executable file" in r.output  # refused before any work
    result = run(sizes=(128,), rounds=1, engine_dir=openvino_engines["fp32"], n0=2, n=6, log=lambda m: None)
    size = result["sizes"]["128x128"]
    assert size["engine"]["precision"] == "fp32"
    rows = size["oneshot"]
    assert {"certseg-rt certify, empty cache", "certseg-rt certify, cached", "torch one-shot script"} <= set(rows)
    assert all(v["seconds_median"] > 0 for v in rows.values())
    if "certseg-run" in result["skipped"]:  # not on PATH here: its rows are left out, with the reason
        assert "certseg-run, cached" not in rows and "--certseg-run" in result["skipped"]["certseg-run"]
    warm = size["in_process"]  # the engine worker refuses to time a process whose engine was not cached
    assert warm["first_certify_seconds_median"] > 0 and warm["torch_warm_pass_seconds_median"] > 0
    table = to_markdown(result)
    assert "| certseg-rt certify, cached |" in table and "first / warm" in table and "8 warm forward passes" in table
