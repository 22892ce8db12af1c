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
        finally:
            self.in_graph = False
        return StandInGraph(step, self)

    def synchronize(self):
        pass


@pytest.fixture(scope="module")
def chest_model(chest_dir):
    from certseg_rt.export.loaders import load_model_dir

    return load_model_dir(chest_dir)


@pytest.fixture(scope="module")
def image(phantom):
    return np.ascontiguousarray(phantom.image[:, 40:40 + SIZE, 40:40 + SIZE])


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


def test_fused_loop_replays_full_batches_and_runs_the_last_partial_one_uncaptured(chest_model, image):
    dev = HostStandIn()
    backend = _backend(chest_model, "fused", device=dev)
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
    assert backend._counts.shape == (4, 16, 16) and backend._counts.dtype == torch.int32


def test_graph_replay_equals_the_uncaptured_loop_and_a_failed_capture_falls_back(chest_model, image):
    graph = _backend(chest_model, "fused")
    plain = _backend(chest_model, "fused", cuda_graph=False)
    failing = _backend(chest_model, "fused", device=HostStandIn(fail_capture=True))
    want = graph.sample_counts(image, 19, 3, 4)
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


def test_model_registry_opens_torch_cuda_and_refuses_engine_backends(chest_dir):
    from certseg_rt.runtime.backends import MODEL_RUNNERS, RUNNERS
    from certseg_rt.runtime.backends import open_model as open_registered

    assert MODEL_RUNNERS["torch-cuda"].gpu and "torch-cuda" not in RUNNERS
    backend = open_registered("torch-cuda", chest_dir, SIGMA, form="eager", device=HostStandIn())
    assert isinstance(backend, TorchCudaBackend) and backend.record["backend"] == "torch-cuda:eager"
    with pytest.raises(CertsegError, match="does not run a model directory"):
        open_registered("tensorrt", chest_dir, SIGMA)


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
