"""The bench's GPU rows and evaluate's packing on the GPU runners, with the GPU stood in for.

Timed rows are stood in for where they would need a GPU (speed is measured by `certseg-rt bench` on a GPU machine,
benchmarks/gpu_check.sh): what runs for real is the plan (which GPU rows, in which processes, no batch sweep, the
throughput rows picked from the fastest of each form), the fractions of the chip's peak and of the forward-pass
limit, the summary against the fastest careful row, the tables, one row's run through the registry (CudaDevice
stood in for by tests/torch_cuda_standin.py), the child process protocol, and evaluate --reference with packing.
"""
import json

import pytest

torch = pytest.importorskip("torch")

from torch_cuda_standin import HostStandIn  # noqa: E402

from certseg_rt.errors import CertsegError  # noqa: E402
from certseg_rt.runtime.backends import torch_cuda, torch_cuda_careful  # noqa: E402

GPU = "NVIDIA H200"
SECONDS = {"torch-eager": 3.0, "onnxruntime": 1.5, "torch-cuda-eager": 0.08, "torch-cuda-careful": 0.012,
           "torch-cuda-fused": 0.01}
SCALE = {"fp32": 1.0, "fp16": 0.5, "bf16": 0.5, "int8": 1.0}


def _fake_bench(monkeypatch, torch_cuda_reason=None, fail=()):
    """Stand-ins for what needs a GPU or minutes: the torch-cuda runners' availability, engine builds and every timed
    row (a row's time depends on its backend, precision and compile variant, so the summary has known ratios)."""
    import certseg_rt.bench.rows as rows
    import certseg_rt.bench.suite as suite
    import certseg_rt.export.build as build
    import certseg_rt.export.loaders as loaders

    monkeypatch.setattr(torch_cuda, "unavailable", lambda **options: torch_cuda_reason)
    monkeypatch.setattr(torch_cuda_careful, "unavailable", lambda **options: torch_cuda_reason)
    monkeypatch.setattr(rows, "gflop_per_sample", lambda model, size: 1.0)
    monkeypatch.setattr(loaders, "load_source", lambda model, image_size: image_size)
    monkeypatch.setattr(build, "build_engine", lambda *a, **k: None)
    calls = {"cpu": [], "gpu": []}

    def row(spec):
        gpu = spec.get("gpu", False)
        seconds = SECONDS[spec["backend"]] * SCALE[spec["precision"]] * (0.4 if spec.get("variant") else 1.0)
        if spec.get("layout") == "channels_last":
            seconds *= 1.1
        out = {"kind": spec["kind"], "backend": spec["backend"], "precision": spec["precision"],
               "layout": spec.get("layout"), "image_size": spec["image_size"], "n0": spec["n0"], "n": spec["n"],
               "batch_size": 100 if gpu else spec["batch_size"], "seconds_median": seconds,
               "samples_per_second": 1.0, "peak_rss_mb": 1.0, "certified_dice": 0.9, "gflops_per_second": 1000.0,
               **({"variant": spec["variant"]} if spec.get("variant") else {}),
               **({"gpu": True, "device": GPU, "cuda_graph": "on", "max_batch": 4096} if gpu else {})}
        if spec["backend"] == "torch-cuda-fused" and spec["kind"] == "reference":
            out["forward_ms_per_sample"] = 0.05 * SCALE[spec["precision"]]
        if spec["kind"] == "throughput":
            out.update({"images": spec["images"], "images_per_second": 1 / seconds, "seconds_median": seconds,
                        "packed_images": 10})
        return out

    def cpu_row(spec):
        calls["cpu"].append(spec)
        return row(spec)

    def gpu_rows(specs):
        calls["gpu"].append(specs)
        return [{"error": "RuntimeError: stand-in failure"} if spec["backend"] in fail else row(spec) for spec in specs]

    monkeypatch.setattr(suite, "row_in_subprocess", cpu_row)
    monkeypatch.setattr(suite, "rows_in_subprocess", gpu_rows)
    return suite, calls


GPU_REFERENCES = ["torch-cuda-careful:fp32", "torch-cuda-careful:fp16", "torch-cuda-careful:bf16:channels_last",
                  "torch-cuda-eager:fp32", "torch-cuda-fused:fp32", "torch-cuda-fused:fp16",
                  "torch-cuda-fused:fp16:compiled"]


def test_gpu_rows_run_in_one_process_per_size_without_a_sweep_and_feed_the_throughput_rows(monkeypatch):
    suite, calls = _fake_bench(monkeypatch)
    result = suite.run(sizes=(128,), ns=(100, 1000), batch_sizes=(8, 16), references=GPU_REFERENCES, gpu_only=True,
                       throughput=64, log=lambda m: None)
    assert calls["cpu"] == []
    latency, through, large = calls["gpu"]  # n=100, its throughput rows, n=1000 (no throughput rows there)
    assert [suite.row_name(s) for s in latency] == [
        "torch-cuda-careful:fp32:nchw", "torch-cuda-careful:fp16:nchw", "torch-cuda-careful:bf16:channels_last",
        "torch-cuda-eager:fp32:nchw", "torch-cuda-fused:fp32:nchw", "torch-cuda-fused:fp16:nchw",
        "torch-cuda-fused:fp16:compiled"]
    assert all(s["batch_size"] is None and s["gpu"] for s in latency)  # the device plan decides, no sweep
    assert [(s["backend"], s["precision"], s.get("variant")) for s in through] == [
        ("torch-cuda-eager", "fp32", None), ("torch-cuda-careful", "fp16", None), ("torch-cuda-fused", "fp16", None),
        ("torch-cuda-fused", "fp16", "compiled")]
    assert all(s["kind"] == "throughput" and s["images"] == 64 for s in through)
    assert [s["n"] for s in large] == [1000] * 7 and large[0]["repeats"] == 3  # GPU rows: repeats at every n
    rows = {(suite.row_name(r), r["kind"], r["n"]): r for r in result["rows"]}
    fused = rows[("torch-cuda-fused:fp16:compiled", "reference", 100)]
    assert fused["peak"] == "fp16 989.5 TFLOP/s" and fused["fraction_of_peak"] == round(1000 / 989500, 4)
    # the forward-pass limit: 0.025 ms x 110 samples against 0.002 s
    assert fused["forward_limit_seconds"] == 0.00275 and fused["of_forward_limit"] == round(0.00275 / 0.002, 3)
    careful = rows[("torch-cuda-careful:fp32:nchw", "reference", 100)]
    assert careful["of_forward_limit"] == round(0.0055 / 0.012, 3)  # against the fp32 limit
    s = result["summary"]["128x128 n=100"]
    assert s["fastest_project_gpu"] == "torch-cuda-fused:fp16:compiled" and s["fastest_careful"] == \
        "torch-cuda-careful:fp16:nchw"
    assert s["speedup_vs_fastest_careful"] == 3.0 and s["gpu_goal"]["met"] and s["gpu_torch_fp32"] == \
        "torch-cuda-careful:fp32:nchw"
    assert s["goal_seconds_128"]["met"] and s["speedup_vs_weak_eager_fp32"] == 40.0
    assert s["torch_cuda_fused_speedup_vs_eager"] == {"fp32": 8.0}
    assert s["fastest_throughput"] == "torch-cuda-fused:fp16:compiled" and s["goal_images_per_second_128"]["met"]
    assert "throughput" not in result["summary"]["128x128 n=1000"]
    from certseg_rt.bench import to_markdown

    table = to_markdown(result)
    assert "GPU (torch-cuda rows): NVIDIA H200." in table and "| backend | precision |" not in table
    assert "| torch-cuda-fused:fp16:compiled | 128x128 | 10 + 100 | 100 (4096) | 0.0020 |" in table
    assert "| 137.5% | 0.10% (fp16 989.5 TFLOP/s) |" in table
    assert "| throughput row |" in table and "| torch-cuda-fused:fp16:compiled | 128x128 | 10 + 100 | 64 | 500.0 |" \
        in table
    assert ("- 128x128 n=100: GPU: torch-cuda-fused:fp16:compiled 0.0020 s, 3.0x the fastest careful torch-cuda row "
            "(torch-cuda-careful:fp16:nchw 0.0060 s) (+0.00 Dice points vs torch-cuda-careful:fp32:nchw) [goal 1.5x "
            "with Dice within 0.5 points: met] [goal <= 6 ms: met]; 40.0x torch-cuda eager fp32 (the weak baseline)"
            ) in table


def test_a_failing_gpu_row_is_listed_with_its_reason_and_the_others_stand(monkeypatch):
    suite, calls = _fake_bench(monkeypatch, fail=("torch-cuda-careful",))
    result = suite.run(sizes=(64,), ns=(100,), batch_sizes=(16,), references=GPU_REFERENCES[3:] + GPU_REFERENCES[:1],
                       gpu_only=True, throughput=0, log=lambda m: None)
    assert len(calls["gpu"]) == 1  # throughput 0: no throughput rows
    assert "torch-cuda-careful:fp32:nchw (reference 64x64 n=100)" in result["skipped"]
    s = result["summary"]["64x64 n=100"]
    assert "fastest_careful" not in s and s["fastest_project_gpu"] == "torch-cuda-fused:fp16:compiled"
    assert "goal_seconds_128" not in s
    from certseg_rt.bench import to_markdown

    assert "- no torch-cuda-careful:fp32:nchw (reference 64x64 n=100) rows: RuntimeError: stand-in failure" in \
        to_markdown(result)


def test_gpu_only_refuses_without_a_gpu_and_a_cpu_run_lists_the_gpu_runners(monkeypatch):
    from certseg_rt.bench import to_markdown

    suite, _ = _fake_bench(monkeypatch, torch_cuda_reason="no CUDA device here")
    with pytest.raises(CertsegError, match="--gpu-only, but this machine has no GPU rows.*no CUDA device here"):
        suite.run(sizes=(64,), gpu_only=True, log=lambda m: None)
    result = suite.run(sizes=(64,), ns=(100,), batch_sizes=(16,), engines=["onnxruntime:fp32"],
                       reference_loop=False, log=lambda m: None)
    assert not any(r.get("gpu") for r in result["rows"])
    table = to_markdown(result)
    assert "- no torch-cuda-careful, torch-cuda-eager, torch-cuda-fused rows: no CUDA device here" in table
    assert "GPU rows" not in table and "| backend | precision |" in table


def test_rows_so_far_are_reported_as_they_come(monkeypatch):
    suite, _ = _fake_bench(monkeypatch)
    seen = []
    result = suite.run(sizes=(64,), ns=(100,), batch_sizes=(16,), references=["torch-cuda-fused:fp16"], gpu_only=True,
                       throughput=4, on_rows=seen.append, log=lambda m: None)
    assert [len(r["rows"]) for r in seen] == [1, 2] and all(r["partial"] for r in seen)  # after each row
    assert "partial" not in result and seen[-1]["rows"][0]["of_forward_limit"] is not None
    from certseg_rt.bench import to_markdown

    assert "- partial: the bench was still running" in to_markdown(seen[0])


def test_the_row_child_runs_a_list_of_rows_and_reports_each_failure():
    from certseg_rt.bench.suite import rows_in_subprocess

    spec = {"kind": "reference", "backend": "no-such-runner", "precision": "fp32", "layout": "nchw", "image_size": 16,
            "n0": 1, "n": 1, "repeats": 1, "batch_size": None, "model": "x", "modality": "chest",
            "gflop_per_sample": 1.0}
    got = list(rows_in_subprocess([spec, {**spec, "backend": "also-missing"}]))
    assert [r["error"] for r in got] == [
        "CertsegError: reference runner 'no-such-runner' is unknown; choose one of torch-cuda-careful, "
        "torch-cuda-eager, torch-cuda-fused, torch-eager",
        "CertsegError: reference runner 'also-missing' is unknown; choose one of torch-cuda-careful, "
        "torch-cuda-eager, torch-cuda-fused, torch-eager"]


@pytest.mark.parametrize("kind", ["reference", "throughput"])
def test_a_gpu_row_through_the_registry_with_the_device_stood_in_for(monkeypatch, chest_dir, kind):
    """The row as its process runs it, CudaDevice stood in for (no GPU here), on tiny images."""
    from certseg_rt.bench.rows import run_row

    monkeypatch.setattr(torch_cuda, "CudaDevice", lambda kernels=True: HostStandIn(warmup_steps=0))
    row = run_row({"kind": kind, "backend": "torch-cuda-fused", "precision": "fp32", "layout": "nchw",
                   "image_size": 16, "n0": 2, "n": 6, "repeats": 1, "batch_size": None, "model": str(chest_dir),
                   "modality": "chest", "gflop_per_sample": 1.0, "dice": False, "gpu": True, "images": 3})
    assert row["backend"] == "torch-cuda-fused" and row["device"] == "stand-in (no GPU)" and row["cuda_graph"] == "on"
    assert row["gpu"] and row["batch_size"] >= 6 and row["max_batch"] == 4096 and row["seconds_median"] > 0
    if kind == "reference":
        assert row["n0"] + row["n"] == 8 and row["forward_batch"] == 6 and row["forward_ms_per_sample"] > 0
    else:
        assert row["images"] == 3 and row["packed_images"] == 3 and row["images_per_second"] > 0
        assert 0 <= row["certified_dice"] <= 1


# ---- evaluate --reference: packing through the CLI ----------------------------------------------------------------

def test_evaluate_on_a_gpu_runner_packs_images_and_gets_each_images_record(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from certseg_rt.cli import main

    devices = []
    monkeypatch.setattr(torch_cuda, "CudaDevice",
                        lambda kernels=True: devices.append(HostStandIn(warmup_steps=0)) or devices[-1])
    runner = CliRunner()
    assert runner.invoke(main, ["make-phantoms", str(tmp_path / "data"), "--count", "2", "--size", "32"]).exit_code == 0
    args = ["evaluate", str(tmp_path / "data"), "--n0", "1", "--n", "3", "--reference", "torch-cuda-fused", "--model",
            "chest-plain-0.25", "--no-denoiser"]  # the segmenter alone: a quick model for the CLI path
    r = runner.invoke(main, [*args, "--out", str(tmp_path / "packed")])
    assert r.exit_code == 0, r.output
    assert devices[-1].captured == [(2, 1), (2, 3)]  # the two images' samples in one batch per call
    monkeypatch.setattr(torch_cuda.TorchCudaBackend, "packs_images", property(lambda self: False))
    r = runner.invoke(main, [*args, "--out", str(tmp_path / "alone")])
    assert r.exit_code == 0, r.output
    assert devices[-1].captured == [(1, 1), (1, 3)]
    folder = "records/plain@torch-cuda-fused/sigma_0.25"
    for name in ("chest_10000000", "chest_10000001"):
        packed = json.loads((tmp_path / "packed" / folder / f"{name}.json").read_text())
        alone = json.loads((tmp_path / "alone" / folder / f"{name}.json").read_text())
        assert packed.pop("seconds") > 0 and alone.pop("seconds") > 0
        assert packed == alone and packed["backend"] == "torch-cuda:fused"
    r = runner.invoke(main, [*args, "--out", str(tmp_path / "x"), "--engine", str(tmp_path)])
    assert r.exit_code == 1 and "--reference runs --model here" in r.output
    bad = [a if a != "torch-cuda-fused" else "torch-cuda-fused:int8" for a in args]
    r = runner.invoke(main, [*bad, "--out", str(tmp_path / "y")])
    assert r.exit_code == 1 and "reference 'torch-cuda-fused:int8'" in r.output and "Traceback" not in r.output


# ---- the GPU check, rehearsed here ------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the bench would run, not refuse")
def test_gpu_check_dry_run_lists_its_steps_and_its_bench_commands_parse(tmp_path):
    """The dry run (with stand-in wheel files) lists every step and 7 result files; each bench command it would run
    parses here and gets as far as the one-line refusal of a machine without a GPU (so a typo in a row name cannot
    first show on the GPU)."""
    import shlex
    import subprocess
    from pathlib import Path

    from click.testing import CliRunner

    from certseg_rt.cli import main

    repo = Path(__file__).resolve().parents[1]
    for line in (repo / "benchmarks" / "gpu_wheels.txt").read_text().splitlines():
        req = line.split("#")[0].strip()
        if req:
            name, version = req.split("==")
            (tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"stand-in")
    r = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "WHEELS": str(tmp_path)}, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "7 files: summary.txt, log.txt" in r.stdout and "missing" not in r.stdout
    assert "pytest -m gpu" in r.stdout and "tests/test_torch_cuda_gpu.py" in r.stdout
    commands = [line.split("-m certseg_rt.cli ", 1)[1] for line in r.stdout.splitlines()
                if "-m certseg_rt.cli " in line]
    assert len(commands) == 2 and "--n0 100 --n 1000" in commands[1] and "--throughput 64" in commands[0]
    assert "torch-cuda-fused:fp16:compiled" in commands[0] and "torch-cuda-careful:bf16:channels_last" in commands[0]
    for command in commands:
        args = shlex.split(command)
        args[args.index("--out") + 1] = str(tmp_path / "out")
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "--gpu-only, but this machine has no GPU rows" in result.output, result.output


def test_a_run_with_cpu_and_gpu_rows_keeps_the_two_comparisons_apart(monkeypatch):
    suite, calls = _fake_bench(monkeypatch)
    result = suite.run(sizes=(128,), ns=(100,), batch_sizes=(16,), engines=["onnxruntime:fp32"],
                       references=["torch-eager:fp32", "torch-cuda-careful:fp32", "torch-cuda-fused:fp16"],
                       reference_loop=False, throughput=0, log=lambda m: None)
    assert [s["backend"] for s in calls["cpu"]] == ["torch-eager", "onnxruntime"]  # one process each, as before
    assert [s["backend"] for s in calls["gpu"][0]] == ["torch-cuda-careful", "torch-cuda-fused"]
    s = result["summary"]["128x128 n=100"]
    assert s["fastest"] == "onnxruntime:fp32" and s["fastest_torch"] == "torch-eager:fp32:nchw"  # CPU against CPU
    assert s["goal"]["speedup"] == 1.4 and s["gpu_goal"]["speedup"] == 1.5
    assert s["speedup_vs_fastest_careful"] == 2.4 and s["gpu_torch_fp32"] == "torch-cuda-careful:fp32:nchw"
    from certseg_rt.bench import to_markdown

    table = to_markdown(result)
    assert "| onnxruntime | fp32 | - | 128x128 |" in table and "| torch-cuda-fused:fp16:nchw | 128x128 |" in table
    assert ("- 128x128 n=100: fastest CPU path onnxruntime:fp32 1.500 s" in table
            and "; GPU: torch-cuda-fused:fp16:nchw 0.0050 s, 2.4x the fastest careful torch-cuda row" in table)
