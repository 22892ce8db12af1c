"""The torch-cuda backend (eager and fused).

Here (no GPU): the backend imports and refuses in one line; its host-side logic (buffers per image shape,
the capture bookkeeping, which batches replay the graph and which run uncaptured, the noise offsets, the
zeroing of the device counts, the out-of-range label check, the record) runs on the CPU with
``HostStandIn`` in place of ``CudaDevice``: the same calls, with the compiled CPU kernels instead of the
CUDA ones and a recorded step instead of a CUDA graph.  A stand-in, because no CUDA device exists here;
it proves the bookkeeping, not the CUDA calls.

GPU tests (``-m gpu``, skipped here with the reason): CUDA noise against the CPU kernels, CUDA votes
against CPU votes, fused == eager counts for each precision, graph replay == uncaptured run, and
torch-cuda fp32 certificates against CPU torch's.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from certseg_rt.errors import CertsegError  # noqa: E402
from certseg_rt.runtime.backends import torch_cuda  # noqa: E402
from certseg_rt.runtime.backends.torch_cuda import TorchCudaBackend, open_model  # noqa: E402

SIGMA = 0.25
SIZE = 24  # a crop of the phantom: the stand-in runs the real chest model on the CPU, so keep it small


class StandInGraph:
    def __init__(self, step, device):
        self.step, self.device = step, device

    def replay(self):
        self.device.replays += 1
        self.device.in_graph = True
        try:
            self.step()
        finally:
            self.device.in_graph = False


class HostStandIn:
    """Stands in for torch_cuda.CudaDevice where no GPU exists (see the module docstring)."""

    type = "cpu"
    device = torch.device("cpu")

    def __init__(self, fail_capture: bool = False):
        from certseg_rt._ext_loader import ext

        self.ext = ext
        self.fail_capture = fail_capture
        self.fills = []  # (first_sample, batch) of every noise launch
        self.uncaptured = []  # batch sizes of steps run outside a graph (warm-up and capture excluded)
        self.replays = 0
        self.in_graph = False  # inside warm-up, capture or replay

    def properties(self):
        return {"device": "stand-in (no GPU)", "compute_capability": "0.0", "cuda": None}

    def fill_noisy(self, x, sigma, seed, first_sample, out):
        assert out.is_contiguous() and out.shape[1:] == x.shape
        self.fills.append((first_sample, out.shape[0]))
        self.ext.fill_noisy(x.numpy(), sigma, seed, first_sample, out.numpy())

    def accumulate_votes(self, labels, counts, bad_label):
        # The CUDA kernel's contract: in-range votes are counted, the largest out-of-range label is kept.
        lab, cnt = labels.numpy(), counts.numpy()
        if not self.in_graph:
            self.uncaptured.append(lab.shape[0])
        for c in range(cnt.shape[0]):
            cnt[c] += (lab == c).sum(0, dtype=np.int32)
        top = int(lab.max())
        if top >= cnt.shape[0]:
            bad_label[0] = max(int(bad_label[0]), top)

    def capture(self, step):
        if self.fail_capture:
            raise RuntimeError("stand-in: this model cannot be captured")
        self.in_graph = True
        try:
            for _ in range(torch_cuda.WARMUP_STEPS):  # like the real warm-up, these add votes too
                step()
            return StandInGraph(step, self), step()  # (graph, its static output), as CudaDevice.capture returns
        finally:
            self.in_graph = False

    def synchronize(self):
        pass


@pytest.fixture(scope="module")
def chest_model(chest_dir):
    from certseg_rt.export.loaders import load_model_dir

    return load_model_dir(chest_dir)


@pytest.fixture(scope="module")
def image(phantom):
    return np.ascontiguousarray(phantom.image[:, 40:40 + SIZE, 40:40 + SIZE])


class ToyLabels(torch.nn.Module):
    """A small fixed random convolution + argmax: labels that depend on the noise, for the bookkeeping tests
    (the real chest model runs in the parity and record tests)."""

    num_classes, channels, size_multiple = 3, 1, 1

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.tensor([0.0, -0.2, 0.2]))

    def denoise_segment(self, sigma):
        return self

    def forward(self, x):
        return self.conv(x).argmax(1).to(torch.uint8)


def _backend(source, form, batch_size=8, **kw):
    return TorchCudaBackend(source.denoise_segment(SIGMA), sigma=SIGMA, num_classes=source.num_classes,
                            channels=source.channels, size_multiple=source.size_multiple, batch_size=batch_size,
                            form=form, device=kw.pop("device", None) or HostStandIn(), **kw)


# ---- here: refusal ----------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
@pytest.mark.parametrize("form", ["eager", "fused"])
def test_refuses_without_a_cuda_device_in_one_line(chest_dir, form):
    with pytest.raises(CertsegError) as e:
        open_model(chest_dir, SIGMA, form=form)
    assert "no CUDA device" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CertsegError, match="no CUDA device"):
        TorchCudaBackend(torch.nn.Identity(), sigma=SIGMA, num_classes=2, channels=1, form=form)


def test_refuses_unknown_precision_and_form(chest_model):
    with pytest.raises(CertsegError, match="choose one of fp32, fp16, bf16"):
        _backend(chest_model, "fused", precision="int8")
    with pytest.raises(CertsegError, match="choose one of eager, fused"):
        _backend(chest_model, "graph")


# ---- here: host-side logic with the CUDA calls stood in for ------------------------------------------------

def test_fused_loop_counts_equal_eager_and_the_cpu_torch_reference(chest_model, image):
    from certseg_rt.runtime.backends.torch_eager import TorchEagerBackend

    fused = _backend(chest_model, "fused")
    eager = _backend(chest_model, "eager")
    cpu = TorchEagerBackend(chest_model.denoise_segment(SIGMA), sigma=SIGMA, num_classes=4, channels=1,
                            size_multiple=chest_model.size_multiple, batch_size=8)
    for num, offset in ((21, 0), (8, 21), (3, 1000)):  # partial last batch; exactly one batch; only a partial one
        want = cpu.sample_counts(image, num, 5, offset)
        assert want.sum() == num * SIZE * SIZE
        assert np.array_equal(fused.sample_counts(image, num, 5, offset), want)
        assert np.array_equal(eager.sample_counts(image, num, 5, offset), want)


def test_fused_loop_replays_full_batches_and_runs_the_last_partial_one_uncaptured(image):
    dev = HostStandIn()
    backend = _backend(ToyLabels(), "fused", device=dev)
    backend.sample_counts(image, 21, 7, 10)
    # Noise: one launch per batch, at sample indices offset + start, straight into the preallocated buffer.
    assert dev.fills == [(10, 8), (18, 8), (26, 5)]
    assert dev.replays == 2 and dev.uncaptured == [5]
    assert backend.captures == 1 and backend.record["cuda_graph"] == "on"
    dev.fills.clear()
    backend.sample_counts(image, 16, 7, 0)  # same shape: the graph is reused, not captured again
    assert backend.captures == 1 and dev.replays == 4 and dev.fills == [(0, 8), (8, 8)]
    backend.sample_counts(np.ascontiguousarray(image[:, :16, :16]), 8, 7, 0)  # another shape: new buffers, new graph
    assert backend.captures == 2 and backend._noisy.shape == (8, 1, 16, 16)
    assert backend._counts.shape == (3, 16, 16) and backend._counts.dtype == torch.int32


def test_graph_replay_equals_the_uncaptured_loop_and_a_failed_capture_falls_back(image):
    from certseg_rt.runtime.sampling import GraphBackend

    toy = ToyLabels()
    graph = _backend(toy, "fused")
    plain = _backend(toy, "fused", cuda_graph=False)
    failing = _backend(toy, "fused", device=HostStandIn(fail_capture=True))
    want = graph.sample_counts(image, 19, 3, 4)
    assert np.array_equal(want, GraphBackend.sample_counts(graph, image, 19, 3, 4))  # the host loop, same model
    assert len(np.unique(want)) > 3  # the labels do depend on the noise
    assert np.array_equal(plain.sample_counts(image, 19, 3, 4), want)
    assert np.array_equal(failing.sample_counts(image, 19, 3, 4), want)
    assert plain.record["cuda_graph"] == "off" and plain.captures == 0
    assert failing.record["cuda_graph"].startswith("unavailable (stand-in: this model cannot be captured")
    assert failing.gpu.replays == 0 and failing.gpu.uncaptured == [8, 8, 3]


class ConstantLabels(torch.nn.Module):
    """A 'model' whose labels are `value` everywhere: the out-of-range check's input."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], *x.shape[2:]), self.value, dtype=torch.uint8)


@pytest.mark.parametrize("form", ["eager", "fused"])
def test_out_of_range_label_is_one_line_and_counts_restart_at_zero(form):
    x = np.full((1, 8, 8), 0.5, np.float32)
    bad = TorchCudaBackend(ConstantLabels(7), sigma=SIGMA, num_classes=3, channels=1, batch_size=4, form=form,
                           device=HostStandIn())
    with pytest.raises((CertsegError, ValueError), match="label 7 out of range for 3 classes"):
        bad.sample_counts(x, 6, 0, 0)
    good = TorchCudaBackend(ConstantLabels(2), sigma=SIGMA, num_classes=3, channels=1, batch_size=4, form=form,
                            device=HostStandIn())
    for _ in range(2):  # the warm-up's votes and the previous call's are gone
        counts = good.sample_counts(x, 6, 0, 0)
        assert counts[2].tolist() == [[6] * 8] * 8 and counts[:2].sum() == 0


def test_record_names_device_precision_form_and_model(chest_dir, image):
    from certseg_rt.certify import certify

    backend = open_model(chest_dir, SIGMA, batch_size=8, precision="bf16", form="fused", device=HostStandIn())
    rec = backend.record
    assert rec["backend"] == "torch-cuda:fused" and rec["form"] == "fused" and rec["precision"] == "bf16"
    assert rec["device"] == "stand-in (no GPU)" and rec["compute_capability"] == "0.0" and rec["tf32"] is False
    assert rec["torch"] == torch.__version__ and rec["modality"] == "chest"
    assert rec["denoiser"]["timestep"] > 0 and "segmenter.safetensors" in rec["model_files"]
    assert backend.input_size == (128, 128)
    cert = certify(backend, image, n0=4, n=12, seed=2)
    assert cert.record["device"] == "stand-in (no GPU)" and cert.record["precision"] == "bf16"
    assert cert.record["cuda_graph"] == "on"
    clean = backend.segment(image)
    assert clean.shape == (SIZE, SIZE) and clean.dtype == np.uint8


def test_reference_registry_opens_torch_cuda_and_refuses_engine_backends(monkeypatch, chest_dir):
    from certseg_rt.runtime.backends import REFERENCES, RUNNERS
    from certseg_rt.runtime.backends import open_model as open_registered

    assert REFERENCES["torch-cuda-eager"].gpu and REFERENCES["torch-cuda-fused"].options == {"form": "fused"}
    assert not any(name.startswith("torch-cuda") for name in RUNNERS)
    monkeypatch.setattr(torch_cuda, "CudaDevice", lambda kernels=True: HostStandIn())
    backend = open_registered(chest_dir, SIGMA, name="torch-cuda-eager", batch_size=4)
    assert isinstance(backend, TorchCudaBackend) and backend.record["backend"] == "torch-cuda:eager"
    with pytest.raises(CertsegError, match="torch-cuda layout 'channels_last'"):
        open_registered(chest_dir, SIGMA, name="torch-cuda-fused", layout="channels_last")
    with pytest.raises(CertsegError, match="reference runner 'tensorrt' is unknown"):
        open_registered(chest_dir, SIGMA, name="tensorrt")


# ---- GPU ----------------------------------------------------------------------------------------------------

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


@gpu_test
@pytest.mark.parametrize("seed,first,elements", [(0, 0, 128 * 128), (2**40 + 3, 2**33 - 5, 3 * 61 * 67)])
def test_gpu_noise_equals_the_cpu_kernels(seed, first, elements):
    from certseg_rt._ext_loader import ext

    batch = 64
    x = np.random.default_rng(seed % 2**32).random(elements, dtype=np.float32)
    want = np.empty((batch, elements), np.float32)
    ext.fill_noisy(x, SIGMA, seed, first, want)
    out = torch.full((batch, elements), float("nan"), device="cuda")  # poisoned: every element must be written
    ext.cuda_fill_noisy_array(torch.from_numpy(x).cuda().__dlpack__(stream=-1), SIGMA, seed, first,
                              out.__dlpack__(stream=-1), stream=torch.cuda.current_stream().cuda_stream)
    got = out.cpu().numpy()
    assert np.isfinite(got).all()
    off = got != want
    assert off.mean() <= NOISE_MISMATCH_BOUND, f"{off.sum()} of {off.size} noisy elements differ"
    assert (_ulps(got[off], want[off]) <= 1).all()


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
    ext.cuda_accumulate_votes_array(lab.__dlpack__(stream=-1), counts.__dlpack__(stream=-1),
                                    bad.__dlpack__(stream=-1), stream=stream)
    assert np.array_equal(counts.cpu().numpy(), want) and int(bad.cpu()[0]) == -1
    lab[3, 5, 6] = 9
    ext.cuda_accumulate_votes_array(lab.__dlpack__(stream=-1), counts.__dlpack__(stream=-1),
                                    bad.__dlpack__(stream=-1), stream=stream)
    assert int(bad.cpu()[0]) == 9 and counts.sum().item() == 2 * want.sum() - 1


@gpu_test
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_gpu_fused_counts_equal_eager_counts(chest_dir, phantom, precision):
    fused = open_model(chest_dir, SIGMA, batch_size=16, precision=precision, form="fused")
    eager = open_model(chest_dir, SIGMA, batch_size=16, precision=precision, form="eager")
    assert fused.record["cuda_graph"] == "on" and fused.record["precision"] == precision
    for num, offset in ((40, 0), (16, 40)):
        a = fused.sample_counts(phantom.image, num, 3, offset)
        assert a.sum() == num * 128 * 128
        assert np.array_equal(a, eager.sample_counts(phantom.image, num, 3, offset))
    assert fused.record["cuda_graph"] == "on" and fused.captures == 1


@gpu_test
def test_gpu_graph_replay_equals_the_uncaptured_run(chest_dir, phantom):
    graph = open_model(chest_dir, SIGMA, batch_size=8, form="fused", cuda_graph=True)
    plain = open_model(chest_dir, SIGMA, batch_size=8, form="fused", cuda_graph=False)
    for num, offset in ((8, 0), (37, 5), (100, 1000)):
        assert np.array_equal(graph.sample_counts(phantom.image, num, 11, offset),
                              plain.sample_counts(phantom.image, num, 11, offset))
    assert graph.captures == 1 and plain.captures == 0


@gpu_test
def test_gpu_fp32_certificates_equal_cpu_torch(chest_dir, reference, phantom):
    from certseg_rt.certify import certify

    backend = open_model(chest_dir, SIGMA, batch_size=16, form="fused")
    props = backend.record
    assert props["device"] and props["compute_capability"].count(".") == 1 and props["tf32"] is False
    a = certify(backend, phantom.image, seed=3)
    b = certify(reference, phantom.image, seed=3)
    assert np.mean(a.labels == b.labels) >= 0.999
    assert a.record["device"] == torch.cuda.get_device_name() and a.record["precision"] == "fp32"


# ---- bench: torch-cuda rows -----------------------------------------------------------------------------------

def _fake_bench(monkeypatch, torch_cuda_reason=None):
    """Stand-ins for what needs a GPU or minutes: torch-cuda's availability check, engine builds and every timed row
    (each row's time depends on its backend and precision, so the summary has known ratios).  What runs for real
    is the bench's plan from the registries (which rows it asks for; TensorRT refuses here) and what the summary
    and the table say."""
    import certseg_rt.bench.rows as rows
    import certseg_rt.bench.suite as suite
    import certseg_rt.export.build as build
    import certseg_rt.export.loaders as loaders

    monkeypatch.setattr(torch_cuda, "unavailable", lambda **options: torch_cuda_reason)
    monkeypatch.setattr(rows, "gflop_per_sample", lambda model, size: 1.0)
    monkeypatch.setattr(loaders, "load_source", lambda model, image_size: image_size)
    monkeypatch.setattr(build, "build_engine", lambda *a, **k: None)
    seconds = {"torch-eager": 3.0, "onnxruntime": 1.5, "torch-cuda-eager": 0.8, "torch-cuda-fused": 0.2}
    scale = {"fp32": 1.0, "fp16": 0.5, "bf16": 0.5, "int8": 1.0}
    asked = []

    def row(spec):
        asked.append((spec["backend"], spec["precision"], spec["batch_size"]))
        gpu = spec["backend"].startswith("torch-cuda")
        return {"kind": spec["kind"], "backend": spec["backend"], "precision": spec["precision"],
                "layout": spec.get("layout"), "image_size": spec["image_size"], "n0": spec["n0"], "n": spec["n"],
                "batch_size": spec["batch_size"],
                "seconds_median": seconds[spec["backend"]] * scale[spec["precision"]] / spec["batch_size"] * 16,
                "samples_per_second": 1.0, "peak_rss_mb": 1.0, "certified_dice": 0.9, "gflops_per_second": 100.0,
                **({"device": "stand-in GPU", "cuda_graph": "on"} if gpu else {})}

    monkeypatch.setattr(suite, "row_in_subprocess", row)
    return suite, asked


def test_bench_reports_torch_cuda_rows_against_the_eager_gpu_baseline(monkeypatch):
    from certseg_rt.bench import to_markdown

    suite, asked = _fake_bench(monkeypatch)
    result = suite.run(sizes=(64,), ns=(100,), batch_sizes=(8, 16), engines=["onnxruntime:fp32"],
                       references=["torch-eager:fp32", "torch-cuda-eager:fp32", "torch-cuda-fused:fp32",
                                   "torch-cuda-eager:bf16", "torch-cuda-fused:bf16"],
                       reference_loop=False, log=lambda m: None)
    gpu_rows = [(r["backend"], r["precision"], r["batch_size"]) for r in result["rows"]
                if r["backend"].startswith("torch-cuda")]
    assert gpu_rows == [("torch-cuda-eager", "fp32", 16), ("torch-cuda-fused", "fp32", 16),
                        ("torch-cuda-eager", "bf16", 16), ("torch-cuda-fused", "bf16", 16)]
    # each GPU configuration swept its batch sizes (timing only) before the reported row
    assert asked.count(("torch-cuda-fused", "bf16", 8)) == 1 and asked.count(("torch-cuda-fused", "bf16", 16)) == 2
    assert all(r["fraction_of_peak"] is None for r in result["rows"] if r["backend"].startswith("torch-cuda"))
    s = result["summary"]["64x64 n=100"]
    assert s["fastest"] == "onnxruntime:fp32" and s["fastest_gpu"] == "torch-cuda-fused:bf16:nchw"
    assert s["gpu_speedup_vs_torch_cuda_eager_fp32"] == 8.0 and s["gpu_speedup_vs_torch_cuda_eager_bf16"] == 4.0
    assert s["torch_cuda_fused_speedup_vs_eager"] == {"fp32": 4.0, "bf16": 4.0}
    assert s["fastest_torch"] == "torch-eager:fp32:nchw"  # the CPU comparison stays CPU against CPU
    table = to_markdown(result)
    assert "GPU (torch-cuda rows): stand-in GPU." in table
    assert "GPU: torch-cuda-fused:bf16:nchw 0.100 s, 8.0x torch-cuda eager fp32, 4.0x torch-cuda eager bf16" in table
    assert "| torch-cuda-fused | bf16 | nchw | 64x64 |" in table


def test_bench_gpu_only_has_no_cpu_rows_and_refuses_without_a_gpu(monkeypatch):
    from certseg_rt.bench import to_markdown

    suite, asked = _fake_bench(monkeypatch)
    result = suite.run(sizes=(64,), ns=(100,), batch_sizes=(16,),
                       references=["torch-cuda-eager:fp16", "torch-cuda-fused:fp16"], gpu_only=True, log=lambda m: None)
    assert {b for b, _, _ in asked} == {"torch-cuda-eager", "torch-cuda-fused"}
    s = result["summary"]["64x64 n=100"]
    assert "fastest" not in s and s["fastest_gpu"] == "torch-cuda-fused:fp16:nchw"
    assert s["torch_cuda_fused_speedup_vs_eager"] == {"fp16": 4.0} and "gpu_speedup_vs_torch_cuda_eager_fp32" not in s
    table = to_markdown(result)
    assert "- 64x64 n=100: GPU: torch-cuda-fused:fp16:nchw 0.100 s; fused over eager: fp16 4.0x" in table
    assert any(line.startswith("- no ") and "tensorrt:fp16" in line and "NVIDIA GPU" in line
               for line in table.splitlines())  # TensorRT refuses here, and says why
    suite, _ = _fake_bench(monkeypatch, torch_cuda_reason="no CUDA device here")
    with pytest.raises(CertsegError, match="--gpu-only, but this machine has no GPU rows.*no CUDA device here"):
        suite.run(sizes=(64,), gpu_only=True, log=lambda m: None)
    result = suite.run(sizes=(64,), ns=(100,), batch_sizes=(16,), engines=["onnxruntime:fp32"],
                       reference_loop=False, log=lambda m: None)
    assert not any(r["backend"].startswith("torch-cuda") for r in result["rows"])
    assert "- no torch-cuda-eager, torch-cuda-fused rows: no CUDA device here" in to_markdown(result)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_bench_here_says_there_is_no_cuda_device():
    from certseg_rt.runtime.backends import reference_unavailable

    assert "no CUDA device" in reference_unavailable("torch-cuda-eager")
    assert "no CUDA device" in reference_unavailable("torch-cuda-fused")


def test_bench_row_opens_torch_cuda_through_the_reference_registry(monkeypatch, chest_dir):
    """The bench row as its subprocess runs it, with CudaDevice stood in for (no GPU here), on a tiny image."""
    from certseg_rt.bench.rows import run_row

    monkeypatch.setattr(torch_cuda, "CudaDevice", lambda kernels=True: HostStandIn())
    row = run_row({"kind": "reference", "backend": "torch-cuda-fused", "precision": "fp32", "layout": "nchw",
                   "image_size": 16, "n0": 2, "n": 6, "repeats": 1, "batch_size": 4, "model": str(chest_dir),
                   "modality": "chest", "gflop_per_sample": 1.0, "dice": False})
    assert row["backend"] == "torch-cuda-fused" and row["device"] == "stand-in (no GPU)" and row["cuda_graph"] == "on"
    assert row["n0"] + row["n"] == 8 and row["seconds_median"] > 0
