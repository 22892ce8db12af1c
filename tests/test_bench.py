"""The bench's plan and arithmetic: rows from the registries, peaks per precision and CPU kind, the summary.

Timed rows are stood in for (speed is measured by `certseg-rt bench`, not by tests): what runs for real is which
rows and engines the bench plans, the peaks it computes and the summary it draws."""
import pytest

from certseg_rt.bench.machine import per_cycle
from certseg_rt.errors import CertsegError
from certseg_rt.bench.suite import add_fractions, engine_rows, reference_rows, row_name, summarize

SAPPHIRE_RAPIDS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
ZEN = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}


@pytest.mark.parametrize("vendor,family,flags,rates", [
    ("GenuineIntel", 6, SAPPHIRE_RAPIDS, {"fp32": 64, "bf16": 1024, "int8": 2048}),
    ("GenuineIntel", 6, ZEN, {"fp32": 64, "bf16": 128, "int8": 256}),  # Cooper Lake: AVX-512 BF16, no AMX
    ("AuthenticAMD", 0x19, ZEN, {"fp32": 32, "bf16": 64, "int8": 128}),  # Zen 4: 256-bit datapaths
    ("AuthenticAMD", 0x1A, ZEN, {"fp32": 64, "bf16": 128, "int8": 256}),  # Zen 5
    ("GenuineIntel", 6, {"avx2", "fma"}, {"fp32": 32, "bf16": 32, "int8": 32}),  # nothing faster than fp32
])
def test_peaks_per_cycle_from_the_isa(vendor, family, flags, rates):
    got, how = per_cycle(vendor, family, flags)
    assert got == rates
    assert f"fp32 {rates['fp32']} FLOP/cycle" in how


def _row(backend, precision, seconds, *, kind="engine", layout=None, size=128, dice=0.95, gflops=100.0):
    return {"kind": kind, "backend": backend, "precision": precision, "layout": layout, "image_size": size, "n0": 10,
            "n": 100, "batch_size": 16, "seconds_median": seconds, "samples_per_second": 1.0, "peak_rss_mb": 1.0,
            "certified_dice": dice, "gflops_per_second": gflops}


def test_fraction_of_peak_uses_the_peak_of_the_precision_that_ran():
    rows = [_row("openvino", "bf16", 1.0), _row("onnxruntime", "int8", 1.0), _row("onnxruntime", "fp32", 1.0),
            _row("torch-eager", "bf16", 1.0, kind="reference", layout="nchw"), _row("tensorrt", "fp16", 1.0)]
    add_fractions(rows, {"peak_gflops": {"fp32": 200.0, "bf16": 1000.0, "int8": 4000.0}})
    assert [(r["peak"], r["fraction_of_peak"]) for r in rows] == [
        ("bf16", 0.1), ("int8", 0.025), ("fp32", 0.5), ("bf16", 0.1), (None, None)]


def test_summary_compares_the_fastest_cpu_engine_with_the_fastest_torch_row():
    rows = [_row("reference-loop", "fp32", 9.0, kind="reference-loop"),
            _row("torch-eager", "fp32", 4.0, kind="reference", layout="nchw"),
            _row("torch-eager", "fp32", 2.0, kind="reference", layout="channels_last"),
            _row("torch-eager", "bf16", 1.4, kind="reference", layout="channels_last", dice=0.949),
            _row("onnxruntime", "fp32", 1.5), _row("openvino", "bf16", 0.7, dice=0.946),
            _row("tensorrt", "fp16", 0.1), _row("openvino", "bf16", 5.0, size=256, dice=0.9)]
    s = summarize(rows)["128x128 n=100"]
    assert s["fastest"] == "openvino:bf16" and s["fastest_torch"] == "torch-eager:bf16:channels_last"
    assert s["speedup_vs_fastest_torch"] == 2.0 and s["speedup_vs_torch_fp32_nchw"] == round(4.0 / 0.7, 2)
    assert s["dice_points_vs_torch_fp32"] == -0.4 and s["goal"]["met"] is True
    assert s["speedup_vs_reference_loop"] == round(9.0 / 0.7, 1)
    assert s["fastest_gpu"] == "tensorrt:fp16"
    rows[5]["certified_dice"] = 0.94  # 1 point below torch fp32: the goal is missed although it is faster
    assert summarize(rows)["128x128 n=100"]["goal"]["met"] is False
    rows[5]["certified_dice"], rows[5]["seconds_median"] = 0.95, 1.1  # 1.27x the fastest torch row: missed
    assert summarize(rows)["128x128 n=100"]["goal"]["met"] is False
    assert "goal" not in summarize(rows)["256x256 n=100"]  # no torch rows at 256 here


def test_rows_come_from_the_registries():
    everything = engine_rows(None, quick=False)
    assert {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16"),
            ("openvino", "int8"), ("tensorrt", "fp16")} <= set(everything)
    quick = engine_rows(None, quick=True)
    assert [p for b, p in quick if b == "openvino"] == ["fp32", "bf16", "int8"]  # OpenVINO rows in --quick too
    assert [p for b, p in quick if b == "tensorrt"] == ["fp16"]
    assert engine_rows(["openvino:int8"], quick=True) == [("openvino", "int8")]
    pytest.importorskip("torch")
    skipped = {}
    cpu_rows = {("torch-eager", p, layout) for p in ("fp32", "bf16") for layout in ("nchw", "channels_last")}
    got = set(reference_rows(None, skipped))
    import torch

    if torch.cuda.is_available():
        assert cpu_rows < got
    else:  # the GPU reference runners are listed with the reason, not run
        assert got == cpu_rows and set(skipped) == {"torch-cuda-careful", "torch-cuda-eager", "torch-cuda-fused"}
        assert all("no CUDA device" in why for why in skipped.values())
    assert reference_rows(["torch-eager:bf16"], {}) == [("torch-eager", "bf16", "nchw")]
    with pytest.raises(CertsegError, match="--references: reference 'torch-eager:fp16'"):
        reference_rows(["torch-eager:fp16"], {})
    assert row_name({"kind": "reference", "backend": "torch-eager", "precision": "bf16", "layout": "nchw"}) == \
        "torch-eager:bf16:nchw"


def test_quick_bench_plans_openvino_rows_and_the_careful_torch_baseline_at_both_sizes(monkeypatch):
    """Stand-ins for every engine build and timed row; the plan (which engines, which rows) is the real one."""
    pytest.importorskip("torch")
    import certseg_rt.bench.rows as rows
    import certseg_rt.bench.suite as suite
    import certseg_rt.export.build as build
    import certseg_rt.export.loaders as loaders

    built, timed = [], []
    monkeypatch.setattr(rows, "gflop_per_sample", lambda model, size: 1.0)
    monkeypatch.setattr(loaders, "load_source", lambda model, image_size: image_size)
    monkeypatch.setattr(build, "build_engine", lambda source, sigma, path, *, backend, precision, batch_sizes, log:
                        built.append((source[0], backend, precision)))
    monkeypatch.setattr(suite, "row_in_subprocess", lambda spec: timed.append(spec) or
                        _row(spec["backend"], spec["precision"], 1.0, kind=spec["kind"], layout=spec.get("layout"),
                             size=spec["image_size"]))
    result = suite.run(sizes=(128, 256), ns=(100,), batch_sizes=(16,), quick=True, log=lambda m: None)
    for size in (128, 256):
        assert {(b, p) for s, b, p in built if s == size} >= {("openvino", "fp32"), ("openvino", "bf16"),
                                                              ("openvino", "int8"), ("onnxruntime", "fp32")}
        names = {row_name(r) for r in result["rows"] if r["image_size"] == size}
        assert {"torch-eager:fp32:nchw", "torch-eager:fp32:channels_last", "torch-eager:bf16:nchw",
                "torch-eager:bf16:channels_last", "openvino:bf16", "openvino:int8", "reference-loop:fp32"} <= names
    assert all(r["fraction_of_peak"] is not None for r in result["rows"])
    assert set(result["summary"]) == {"128x128 n=100", "256x256 n=100"}
    from certseg_rt.bench import to_markdown

    table = to_markdown(result)
    assert "| openvino | bf16 | - | 128x128 |" in table and "(bf16) |" in table and "(int8) |" in table
