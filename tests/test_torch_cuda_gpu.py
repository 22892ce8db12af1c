"""The torch-cuda runners and the CUDA kernels on a real GPU (``pytest -m gpu``; benchmarks/gpu_check.sh runs them).

Skipped where there is no CUDA device or the extension has no CUDA kernels, with the reason.  What they check:
the CUDA noise and votes against the CPU kernels (plain and packed), the noise kernel inside a replayed graph
following the counter in device memory, fused == eager counts at each precision, graph replay == uncaptured run,
packed == one image at a time (bit for bit at fp32), fp32 certificates against CPU torch's, the careful baseline's
certificates beside the fused form's, and the compiled model: parity, counts, and a second process that loads it
from inductor's on-disk cache instead of compiling.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from certseg_rt.runtime.backends import torch_cuda_careful  # noqa: E402
from certseg_rt.runtime.backends.torch_cuda import open_model  # noqa: E402

SIGMA = 0.25


def _gpu_reason():
    from certseg_rt._ext_loader import EXTENSION_STATUS

    if not torch.cuda.is_available():
        return "no CUDA device"
    if not EXTENSION_STATUS["cuda"]:
        return "certseg-rt was built without its CUDA kernels"
    return None


GPU_REASON = _gpu_reason()


def gpu_test(fn):
    return pytest.mark.gpu(pytest.mark.skipif(GPU_REASON is not None, reason=f"GPU test: {GPU_REASON}")(fn))


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 units in the last place (same-sign values; noise is never -0 vs +0 here)."""
    ia, ib = a.view(np.int32).astype(np.int64), b.view(np.int32).astype(np.int64)
    return np.abs(ia - ib)


# CUDA's double-precision log/cos/sin are within 1-2 ulp of glibc's (CUDA C Programming Guide, "Mathematical
# Functions"): after rounding to float32 the noise is bit-identical except where the double lies within those
# ulps of a float32 rounding boundary, about 1 element in 10^8; such an element is 1 float32 ulp off.
NOISE_MISMATCH_BOUND = 1e-6


def _close_noise(got: np.ndarray, want: np.ndarray) -> None:
    assert np.isfinite(got).all()
    off = got != want
    assert off.mean() <= NOISE_MISMATCH_BOUND, f"{off.sum()} of {off.size} noisy elements differ"
    assert (_ulps(got[off], want[off]) <= 1).all()


def _dl(t):
    return t.__dlpack__(stream=-1)


@gpu_test
@pytest.mark.parametrize("seed,first,elements", [(0, 0, 128 * 128), (2**40 + 3, 2**33 - 5, 3 * 61 * 67)])
def test_gpu_noise_equals_the_cpu_kernels(seed, first, elements):
    from certseg_rt._ext_loader import ext

    batch = 64
    x = np.random.default_rng(seed % 2**32).random(elements, dtype=np.float32)
    want = np.empty((batch, elements), np.float32)
    ext.fill_noisy(x, SIGMA, seed, first, want)
    out = torch.full((batch, elements), float("nan"), device="cuda")  # poisoned: every element must be written
    ext.cuda_fill_noisy_array(_dl(torch.from_numpy(x).cuda()), SIGMA, seed, first, _dl(out),
                              stream=torch.cuda.current_stream().cuda_stream)
    _close_noise(out.cpu().numpy(), want)


@gpu_test
def test_gpu_votes_equal_cpu_votes_and_report_the_bad_label():
    from certseg_rt._ext_loader import ext

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, (37, 61, 67), dtype=np.uint8)
    want = np.zeros((5, 61, 67), np.int32)
    ext.accumulate_votes(labels, want)
    counts = torch.zeros((5, 61, 67), dtype=torch.int32, device="cuda")
    bad = torch.full((1,), -1, dtype=torch.int32, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    lab = torch.from_numpy(labels).cuda()
    ext.cuda_accumulate_votes_array(_dl(lab), _dl(counts), _dl(bad), stream=stream)
    assert np.array_equal(counts.cpu().numpy(), want) and int(bad.cpu()[0]) == -1
    lab[3, 5, 6] = 9
    ext.cuda_accumulate_votes_array(_dl(lab), _dl(counts), _dl(bad), stream=stream)
    assert int(bad.cpu()[0]) == 9 and counts.sum().item() == 2 * want.sum() - 1


@gpu_test
def test_gpu_noise_in_a_replayed_graph_follows_the_counter_in_device_memory():
    """noise -> counter += m, captured once: each replay draws the next m samples of every image, as the host
    kernels give them."""
    from certseg_rt._ext_loader import ext
    from certseg_rt.runtime.backends.torch_cuda_device import CudaDevice

    gpu = CudaDevice()
    images, rows, seed, first = 3, 8, 2**63 + 7, 2**33 - 3
    x = np.random.default_rng(4).random((images, 1, 61, 67), dtype=np.float32)
    xd = torch.from_numpy(x).cuda()
    out = torch.empty((images * rows, 1, 61, 67), device="cuda")
    counter = torch.zeros((3,), dtype=torch.int64, device="cuda")

    def step():
        gpu.fill_noisy_packed(xd, SIGMA, counter, out)
        gpu.advance_counter(counter, rows)

    graph, _ = gpu.capture(step)
    counter.copy_(torch.tensor([seed - 2**64, first, first + 3 * rows], dtype=torch.int64))
    for k in range(3):
        graph.replay()
        want = np.empty((images * rows, 1, 61, 67), np.float32)
        ext.fill_noisy_packed(x, SIGMA, np.array([seed, first + k * rows, first + 3 * rows], np.uint64), want)
        _close_noise(out.cpu().numpy(), want)
    assert int(counter.cpu()[1]) == first + 3 * rows


@gpu_test
def test_gpu_packed_votes_equal_the_host_kernels_and_drop_padding_rows():
    from certseg_rt._ext_loader import ext
    from certseg_rt.runtime.backends.torch_cuda_device import CudaDevice

    gpu = CudaDevice()
    labels = np.random.default_rng(2).integers(0, 4, (3 * 6, 33, 35), dtype=np.uint8)
    labels[4:6] = 99  # image 0's rows 4 and 5: padding for a counter with end - next = 4
    want = np.zeros((3, 4, 33, 35), np.int32)
    ctr = np.array([1, 100, 104], np.uint64)
    ext.accumulate_votes_packed(labels, want, ctr)
    counts = torch.zeros((3, 4, 33, 35), dtype=torch.int32, device="cuda")
    bad = torch.full((1,), -1, dtype=torch.int32, device="cuda")
    gpu.accumulate_votes_packed(torch.from_numpy(labels).cuda(), counts, bad,
                                torch.from_numpy(ctr.view(np.int64)).cuda())
    assert np.array_equal(counts.cpu().numpy(), want) and int(bad.cpu()[0]) == -1


@gpu_test
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_gpu_fused_counts_equal_eager_counts(chest_dir, phantom, precision):
    fused = open_model(chest_dir, SIGMA, batch_size=16, precision=precision, form="fused")
    eager = open_model(chest_dir, SIGMA, batch_size=16, precision=precision, form="eager")
    for num, offset in ((40, 0), (16, 40)):  # the same static plans: 3 batches of 14 (last padded), one of 16
        a = fused.sample_counts(phantom.image, num, 3, offset)
        assert a.sum() == num * 128 * 128
        assert np.array_equal(a, eager.sample_counts(phantom.image, num, 3, offset))
    assert fused.record["cuda_graph"] == "on" and fused.record["precision"] == precision and fused.captures == 2


@gpu_test
def test_gpu_graph_replay_equals_the_uncaptured_run(chest_dir, phantom):
    graph = open_model(chest_dir, SIGMA, batch_size=8, form="fused", cuda_graph=True)
    plain = open_model(chest_dir, SIGMA, batch_size=8, form="fused", cuda_graph=False)
    for num, offset in ((8, 0), (37, 5), (100, 1000)):
        assert np.array_equal(graph.sample_counts(phantom.image, num, 11, offset),
                              plain.sample_counts(phantom.image, num, 11, offset))
    assert graph.captures == 1 and plain.captures == 0  # 8, 37 and 100 samples all run in batches of 8


@gpu_test
def test_gpu_packed_equals_one_image_at_a_time_bit_for_bit_at_fp32(chest_dir):
    from certseg_rt.certify import certify, certify_many
    from certseg_rt.data.phantom import HELD_OUT_SEEDS, make_phantom
    from certseg_rt.runtime.sampling import Run, count_runs

    images = [make_phantom(HELD_OUT_SEEDS[900 + i], size=128).image for i in range(5)]
    fused = open_model(chest_dir, SIGMA, form="fused")  # the device memory decides the batch
    runs = list(count_runs(fused, [Run(x, 10, 100, tag=i) for i, x in enumerate(images)], 3))
    packed = fused.record["packed_images"]
    assert packed >= 2, f"only {packed} image(s) of 100 samples fit a batch on this GPU"
    assert fused.record["batch_size"] == 100 * packed and [r.tag for r in runs] == list(range(5))
    for x, run in zip(images, runs):
        assert np.array_equal(run.counts, fused.sample_counts(x, 100, 3, 10))
    for x, cert in zip(images, certify_many(fused, images, n0=10, n=100, seed=5)):
        want = certify(fused, x, n0=10, n=100, seed=5)
        assert np.array_equal(cert.labels, want.labels) and np.array_equal(cert.pvalues, want.pvalues)


@gpu_test
def test_gpu_fp32_certificates_equal_cpu_torch(chest_dir, reference, phantom):
    from certseg_rt.certify import certify

    backend = open_model(chest_dir, SIGMA, form="fused")
    props = backend.record
    assert props["device"] and props["compute_capability"].count(".") == 1 and props["tf32"] is False
    a = certify(backend, phantom.image, seed=3)
    b = certify(reference, phantom.image, seed=3)
    assert np.mean(a.labels == b.labels) >= 0.999
    assert a.record["device"] == torch.cuda.get_device_name() and a.record["precision"] == "fp32"


@gpu_test
@pytest.mark.parametrize("precision,layout", [("fp32", "nchw"), ("bf16", "channels_last")])
def test_gpu_careful_baseline_certifies_as_the_fused_form(chest_dir, phantom, precision, layout):
    """Another noise (torch's), so not the same bits: the same model certified, so the same picture."""
    from certseg_rt.certify import certify
    from certseg_rt.metrics import mean_foreground_dice

    careful = torch_cuda_careful.open_model(chest_dir, SIGMA, precision=precision, layout=layout)
    fused = open_model(chest_dir, SIGMA, precision=precision, form="fused")
    a, b = certify(careful, phantom.image, seed=1), certify(fused, phantom.image, seed=1)
    assert careful.record["batch_size"] == 100 and "torch.randn" in a.record["noise"]
    # measured on the CPU between two seeds of one backend: 99.5% of the labels, Dice within 0.003
    assert np.mean(a.labels == b.labels) >= 0.98
    assert abs(mean_foreground_dice(a.labels, phantom.mask, 4) - mean_foreground_dice(b.labels, phantom.mask, 4)) < 0.01


@gpu_test
def test_gpu_compiled_model_parity_counts_and_a_second_process_loads_it_from_the_cache(chest_dir, phantom):
    """fp16, inductor's default mode: the variant the GPU check benches (its compile at 128x128 is then cached)."""
    pytest.importorskip("triton", reason="inductor's GPU kernels need Triton, which this torch lacks")
    compiled = open_model(chest_dir, SIGMA, precision="fp16", form="fused", variant="compiled")
    rec = compiled.record["compiled"]
    assert rec["parity"]["label_agreement"] >= 0.995 and rec["backend"] == "inductor" and rec["seconds"] > 0
    plain = open_model(chest_dir, SIGMA, precision="fp16", form="fused")
    a, b = compiled.sample_counts(phantom.image, 100, 2, 10), plain.sample_counts(phantom.image, 100, 2, 10)
    assert a.sum() == b.sum() and np.abs(a - b).sum() / 2 <= 0.01 * b.sum()  # <= 1% of the votes moved
    assert compiled.record["cuda_graph"] == "on"
    code = ("import json; from certseg_rt.runtime.backends.torch_cuda import open_model; from certseg_rt.zoo import "
            "bundled_model_dir; b = open_model(bundled_model_dir('chest'), 0.25, precision='fp16', variant='compiled');"
            " print(json.dumps(b.record['compiled']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    second = json.loads(r.stdout.strip().splitlines()[-1])
    assert second["cache"]["graphs_compiled"] == 0 and second["cache"]["graphs_loaded"] >= 1, second
    assert second["seconds"] < rec["seconds"] or rec["cache"]["graphs_compiled"] == 0
