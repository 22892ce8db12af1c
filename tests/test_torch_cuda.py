"""The torch-cuda runners: the fused device loop, the weak eager loop and the careful baseline.

Here (no GPU): the runners import and refuse in one line; their host-side logic runs on the CPU with
``HostStandIn`` (tests/torch_cuda_standin.py) in place of ``CudaDevice``: the packed noise and vote kernels'
host forms (the same per-element bodies and unit mapping as the CUDA kernels), the counter moved as the
one-thread kernel moves it, a recorded step for a CUDA graph, device memory modelled as fixed + batch x
per-sample bytes.  A stand-in, because no CUDA device exists here: it proves the bookkeeping (batch plans,
counters, buffers, captures, packing, records), not the CUDA calls.

GPU tests (``-m gpu``, skipped here with the reason) are in tests/test_torch_cuda_gpu.py.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_cuda_standin import ConstantLabels, HostStandIn, ToyLabels  # noqa: E402

from certseg_rt.errors import CertsegError  # noqa: E402
from certseg_rt.runtime.backends import torch_cuda, torch_cuda_careful  # noqa: E402
from certseg_rt.runtime.backends.torch_cuda import TorchCudaBackend, open_model  # noqa: E402

SIGMA = 0.25
SIZE = 48  # a crop of the phantom (the stand-in runs the real chest model on the CPU) where it finds organs
MIB = 1 << 20


@pytest.fixture(scope="module")
def chest_model(chest_dir):
    from certseg_rt.export.loaders import load_model_dir

    return load_model_dir(chest_dir)


@pytest.fixture(scope="module")
def image(phantom):
    return np.ascontiguousarray(phantom.image[:, 30:30 + SIZE, 10:10 + SIZE])


def _backend(source, form="fused", batch_size=8, **kw):
    return TorchCudaBackend(source.denoise_segment(SIGMA), sigma=SIGMA, num_classes=source.num_classes,
                            channels=source.channels, size_multiple=source.size_multiple, batch_size=batch_size,
                            form=form, device=kw.pop("device", None) or HostStandIn(), **kw)


def _free_for(cap: int, shape=(1, SIZE, SIZE), per_sample=MIB) -> int:
    """Stand-in free device memory in which exactly `cap` samples of `shape` fit (fit_device_batch's arithmetic)."""
    from certseg_rt.runtime.backends.torch_cuda_device import DEFAULT_DEVICE_SHARE, PER_SAMPLE_HEADROOM

    io = 4 * int(np.prod(shape)) + shape[1] * shape[2]
    return int((cap + 0.5) * (int(PER_SAMPLE_HEADROOM * per_sample) + io) / DEFAULT_DEVICE_SHARE)


# ---- refusals ---------------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
@pytest.mark.parametrize("form", ["eager", "fused"])
def test_refuses_without_a_cuda_device_in_one_line(chest_dir, form):
    with pytest.raises(CertsegError) as e:
        open_model(chest_dir, SIGMA, form=form)
    assert "no CUDA device" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CertsegError, match="no CUDA device"):
        TorchCudaBackend(torch.nn.Identity(), sigma=SIGMA, num_classes=2, channels=1, form=form)
    with pytest.raises(CertsegError, match="no CUDA device"):
        torch_cuda_careful.open_model(chest_dir, SIGMA)


def test_refuses_unknown_precision_form_and_variant(chest_model):
    with pytest.raises(CertsegError, match="choose one of fp32, fp16, bf16"):
        _backend(chest_model, precision="int8")
    with pytest.raises(CertsegError, match="choose one of eager, fused"):
        _backend(chest_model, "graph")
    with pytest.raises(CertsegError, match="the fused form takes compiled or compiled-autotune"):
        _backend(chest_model, "eager", compile="compiled")
    with pytest.raises(CertsegError, match="torch-cuda-careful precision 'int8'"):
        torch_cuda_careful.TorchCudaCarefulBackend(ToyLabels(), sigma=SIGMA, num_classes=3, channels=1,
                                                   precision="int8", device=HostStandIn())


# ---- the fused loop: noise in the graph, counters, batch plans ------------------------------------------------------

def test_fused_counts_equal_eager_and_the_cpu_torch_reference(chest_model, image):
    from certseg_rt.runtime.backends.torch_eager import TorchEagerBackend

    fused, eager = _backend(chest_model, batch_size=4), _backend(chest_model, "eager", batch_size=4)
    cpu = TorchEagerBackend(chest_model.denoise_segment(SIGMA), sigma=SIGMA, num_classes=4, channels=1,
                            size_multiple=chest_model.size_multiple, batch_size=4)
    cpu.static_batch = True  # the same batches as the torch-cuda forms (3, 3, 3 for 9 samples at most 4)
    for num, offset in ((9, 0),):  # 3 batches of 3 samples, the last padded by one
        want = cpu.sample_counts(image, num, 5, offset)
        assert want.sum() == num * SIZE * SIZE and want[1:].sum() > 0  # organs found, not only background
        assert np.array_equal(fused.sample_counts(image, num, 5, offset), want)
        assert np.array_equal(eager.sample_counts(image, num, 5, offset), want)


def test_counter_advances_per_replay_and_the_noise_is_the_hosts_philox(image):
    dev = HostStandIn(keep_noise=True)
    backend = _backend(ToyLabels(), device=dev)
    seed = 2**63 + 11  # a seed past int64: the counter holds its bits
    backend.sample_counts(image, 21, seed, 10)
    # one graph of 7 rows (21 samples at most 8 per batch: 3 equal batches), replayed 3 times; the counter's
    # `next` moved by the graph's one-thread kernel: 10, 17, 24; `end` = 31
    assert dev.captured == [(1, 7)] and dev.replays == 3 and dev.uncaptured == []
    assert [(s, nxt) for s, nxt, _, _ in dev.noise] == [(seed, 10), (seed, 17), (seed, 24)]
    assert backend._counter.tolist() == [seed - 2**64, 31, 31]
    for _, nxt, x, noisy in dev.noise:  # exactly the samples the host kernels give these sample indices
        want = np.empty((7, *image.shape), np.float32)
        from certseg_rt import kernels

        kernels.fill_noisy(image, SIGMA, seed, nxt, out=want)
        assert np.array_equal(noisy.numpy(), want) and np.array_equal(x[0].numpy(), image)


def test_batch_plan_is_static_per_call_within_the_device_memory_budget(image):
    dev = HostStandIn(free=_free_for(40))
    backend = _backend(ToyLabels(), batch_size=None, device=dev)
    backend.sample_counts(image, 10, 0, 0)
    assert backend.batch_size == 40 and backend.record["max_batch"] == 40
    assert backend.record["batch_size"] == 10 and dev.captured == [(1, 10)] and dev.replays == 1
    counts = backend.sample_counts(image, 100, 0, 10)  # 3 equal batches of 34, the last padded by 2
    assert counts.sum() == 100 * SIZE * SIZE and backend.record["batch_size"] == 34
    assert dev.captured == [(1, 10), (1, 34)] and dev.replays == 4
    assert [f[:3] for f in dev.fills[-3:]] == [(10, 1, 34), (44, 1, 34), (78, 1, 34)]
    requested = _backend(ToyLabels(), batch_size=16, device=HostStandIn(free=_free_for(40)))
    requested.sample_counts(image, 100, 0, 10)
    assert requested.batch_size == 16 and requested.record["batch_size"] == 15  # 7 batches of 15 <= 16
    budget = _backend(ToyLabels(), batch_size=None, device=HostStandIn(), max_memory=_free_for(25) * 0.85)
    budget.sample_counts(image, 10, 0, 0)
    assert budget.batch_size == 25  # --max-memory is device memory
    with pytest.raises(CertsegError, match="sample needs about .* MiB of device memory, over the budget"):
        _backend(ToyLabels(), batch_size=None, device=HostStandIn(free=MIB)).sample_counts(image, 10, 0, 0)


def test_out_of_device_memory_halves_the_batch_and_the_counts_do_not_change(image):
    want = _backend(ToyLabels(), batch_size=None, device=HostStandIn(free=_free_for(64))).sample_counts(image, 60, 3, 0)
    dev = HostStandIn(free=_free_for(64), oom_above=20)
    backend = _backend(ToyLabels(), batch_size=None, device=dev)
    assert np.array_equal(backend.sample_counts(image, 60, 3, 0), want)
    assert backend.batch_size == 16 and dev.released == 2  # 64 -> 32 -> 16
    assert backend.record["max_batch"] == 16 and backend.record["batch_size"] == 15


def test_one_graph_per_plan_reused_and_new_buffers_for_a_new_shape(image):
    from certseg_rt.runtime.backends.torch_cuda import MAX_GRAPHS

    dev = HostStandIn()
    backend = _backend(ToyLabels(), device=dev)
    for _ in range(2):
        backend.sample_counts(image, 16, 7, 0)
    assert backend.captures == 1 and dev.replays == 4 and backend.record["cuda_graph"] == "on"
    for num in range(1, MAX_GRAPHS + 2):  # more plans than graphs kept: the oldest goes
        backend.sample_counts(image, num, 7, 0)
    assert len(backend._graphs) == MAX_GRAPHS
    small = np.ascontiguousarray(image[:, :16, :16])
    backend.sample_counts(small, 8, 7, 0)
    assert backend._noisy.shape[1:] == (1, 16, 16) and len(backend._graphs) == 1
    assert backend._counts(1).shape == (1, 3, 16, 16) and backend._counts(1).dtype == torch.int32


def test_graph_replay_equals_the_uncaptured_loop_and_a_failed_capture_falls_back(image):
    toy = ToyLabels()
    graph = _backend(toy)
    plain = _backend(toy, cuda_graph=False)
    failing = _backend(toy, device=HostStandIn(fail_capture=True))
    want = graph.sample_counts(image, 19, 3, 4)
    assert len(np.unique(want)) > 3  # the labels do depend on the noise
    assert np.array_equal(plain.sample_counts(image, 19, 3, 4), want)
    assert np.array_equal(failing.sample_counts(image, 19, 3, 4), want)
    assert plain.record["cuda_graph"] == "off" and plain.captures == 0
    assert failing.record["cuda_graph"].startswith("unavailable (stand-in: this model cannot be captured")
    assert failing.gpu.replays == 0 and failing.gpu.uncaptured == [7, 7, 7]


@pytest.mark.parametrize("form", ["eager", "fused", "careful"])
def test_out_of_range_label_is_one_line_and_counts_restart_at_zero(form):
    x = np.full((1, 8, 8), 0.5, np.float32)

    def make(value):
        if form == "careful":
            return torch_cuda_careful.TorchCudaCarefulBackend(ConstantLabels(value), sigma=SIGMA, num_classes=3,
                                                              channels=1, batch_size=4, device=HostStandIn())
        return TorchCudaBackend(ConstantLabels(value), sigma=SIGMA, num_classes=3, channels=1, batch_size=4,
                                form=form, device=HostStandIn())

    with pytest.raises((CertsegError, ValueError), match="label 7 out of range for 3 classes"):
        make(7).sample_counts(x, 6, 0, 0)
    good = make(2)
    for _ in range(2):  # the warm-up's votes and the previous call's are gone
        counts = good.sample_counts(x, 6, 0, 0)
        assert counts[2].tolist() == [[6] * 8] * 8 and counts[:2].sum() == 0


# ---- packing: several images' runs in one batch (count_runs) ---------------------------------------------------------

def _rolled(image, count, step=7):
    return [np.ascontiguousarray(np.roll(image, step * i, axis=1)) for i in range(count)]


def test_packed_runs_give_each_image_exactly_its_counts_alone(image):
    from certseg_rt.runtime.sampling import Run, count_runs

    images = _rolled(image, 3)
    dev = HostStandIn()
    backend = _backend(ToyLabels(), batch_size=16, device=dev)
    assert backend.packs_images and backend.packs_runs and not _backend(ToyLabels(), "eager").packs_runs
    runs = [Run(x, 3, 5, tag=i) for i, x in enumerate(images)] + [Run(images[0], 40, 5, tag="alone")]
    done = list(count_runs(backend, runs, 4))
    assert done == runs  # the caller's runs, in order
    # 3 images x 5 rows in one batch (16 // 5 = 3 fit), one replay; the run with another first sample alone
    assert dev.captured == [(3, 5), (1, 5)] and dev.replays == 2
    assert (3, 3, 5) in dev.fills and dev.fills[-1] == (40, 1, 5)  # (first sample, images, rows per image)
    alone = _backend(ToyLabels(), batch_size=16)
    for run in done:
        assert np.array_equal(run.counts, alone.sample_counts(run.x, 5, 4, run.first))
    assert not np.array_equal(done[0].counts, done[1].counts) and not np.array_equal(done[1].counts, done[2].counts)
    # after an out-of-memory the pack is counted in smaller batches: 3 images x 2 rows, 3 replays, the last padded
    dev = HostStandIn(oom_above=8)
    halved = _backend(ToyLabels(), batch_size=16, device=dev)
    again = list(count_runs(halved, [Run(x, 3, 5, tag=i) for i, x in enumerate(images)], 4))
    assert halved.batch_size == 8 and dev.released == 1 and dev.captured[-1] == (3, 2)
    assert all(np.array_equal(a.counts, b.counts) for a, b in zip(again, done))


def test_certify_many_packs_the_fewest_equal_groups_and_equals_certify(image):
    from certseg_rt.certify import certify, certify_many

    images = _rolled(image, 5, 3)
    dev = HostStandIn(free=_free_for(40))
    backend = _backend(ToyLabels(), batch_size=None, device=dev)
    certs = certify_many(backend, images, n0=6, n=20, seed=9)
    # selection: the 5 images in one batch (40 // 6 = 6 fit); estimation: 2 fit, so 3 packs of 2, the last padded
    assert dev.captured == [(5, 6), (2, 20)] and dev.replays == 4
    alone = _backend(ToyLabels(), batch_size=None, device=HostStandIn(free=_free_for(40)))
    for x, cert in zip(images, certs):
        want = certify(alone, x, n0=6, n=20, seed=9)
        assert np.array_equal(cert.labels, want.labels) and np.array_equal(cert.pvalues, want.pvalues)
        assert cert.record["packed_images"] == 2 and cert.record["seconds"] > 0


# ---- the careful baseline --------------------------------------------------------------------------------------------

def _careful(model=None, **kw):
    return torch_cuda_careful.TorchCudaCarefulBackend(model or ToyLabels(), sigma=SIGMA, num_classes=3, channels=1,
                                                      device=kw.pop("device", None) or HostStandIn(), **kw)


def test_careful_draws_torch_noise_from_a_generator_seeded_per_call_and_counts_on_the_device(image):
    backend = _careful(batch_size=None, device=HostStandIn(free=_free_for(40, per_sample=MIB) // 2))
    counts = backend.sample_counts(image, 50, 8, 10)
    # what the careful user writes, by hand: torch.randn from the call's generator, in the same batches
    g = torch.Generator().manual_seed(torch_cuda_careful.generator_seed(8, 10))
    rows = backend.record["batch_size"]
    assert rows < 50 and 50 % rows < rows  # more than one batch: the fewest equal ones that fit
    want = np.zeros_like(counts)
    done = 0
    while done < 50:
        m = min(rows, 50 - done)
        noise = torch.randn((m, *image.shape), generator=g)
        labels = ToyLabels()(torch.from_numpy(image)[None] + SIGMA * noise).numpy()
        for c in range(3):
            want[c] += (labels == c).sum(0)
        done += m
    assert np.array_equal(counts, want)
    assert torch_cuda_careful.generator_seed(8, 0) != torch_cuda_careful.generator_seed(8, 10)  # n0 and n apart
    assert "not the project's keyed noise" in backend.record["noise"] and backend.record["cudnn_benchmark"]


def test_careful_packs_images_with_their_own_counts(image):
    from certseg_rt.runtime.sampling import Run, count_runs

    images = _rolled(image, 3, 5)
    backend = _careful()
    packed = list(count_runs(backend, [Run(x, 0, 12) for x in images], 2))
    assert backend.record["packed_images"] == 3 and backend.packs_images
    for run in packed:
        assert np.array_equal(run.counts, _careful().sample_counts(run.x, 12, 2, 0))


# ---- the record, the registry --------------------------------------------------------------------------------------

def test_record_names_device_precision_form_batches_and_model(chest_dir, image):
    from certseg_rt.certify import certify

    backend = open_model(chest_dir, SIGMA, batch_size=8, precision="bf16", form="fused",
                         device=HostStandIn(warmup_steps=0))
    rec = backend.record
    assert rec["backend"] == "torch-cuda:fused" and rec["form"] == "fused" and rec["precision"] == "bf16"
    assert rec["device"] == "stand-in (no GPU)" and rec["compute_capability"] == "0.0" and rec["tf32"] is False
    assert rec["torch"] == torch.__version__ and rec["modality"] == "chest" and rec["compiled"] is None
    assert rec["denoiser"]["timestep"] > 0 and "segmenter.safetensors" in rec["model_files"]
    assert backend.input_size == (128, 128) and rec["noise"].startswith("philox")
    cert = certify(backend, image[:, :16, :16], n0=2, n=12, seed=2)
    assert cert.record["device"] == "stand-in (no GPU)" and cert.record["precision"] == "bf16"
    assert cert.record["cuda_graph"] == "on" and cert.record["batch_size"] == 6 and cert.record["max_batch"] == 8
    assert "static per call" in cert.record["batch_rule"]
    clean = backend.segment(image[:, :16, :16])
    assert clean.shape == (16, 16) and clean.dtype == np.uint8


def test_reference_registry_opens_the_torch_cuda_runners(monkeypatch, chest_dir):
    from certseg_rt.runtime.backends import REFERENCES, RUNNERS
    from certseg_rt.runtime.backends import open_model as open_registered

    assert REFERENCES["torch-cuda-eager"].gpu and REFERENCES["torch-cuda-fused"].options == {"form": "fused"}
    assert REFERENCES["torch-cuda-fused"].variants[0] == "compiled" and REFERENCES["torch-cuda-careful"].gpu
    assert not any(name.startswith("torch-cuda") for name in RUNNERS)
    monkeypatch.setattr(torch_cuda, "CudaDevice", lambda kernels=True: HostStandIn())
    monkeypatch.setattr(torch_cuda_careful, "CudaDevice", lambda kernels=True: HostStandIn())
    eager = open_registered(chest_dir, SIGMA, name="torch-cuda-eager", batch_size=None)
    assert isinstance(eager, TorchCudaBackend) and eager.record["backend"] == "torch-cuda:eager"
    assert eager.batch_size == torch_cuda.EAGER_BATCH  # the weak baseline's batch, as measured before
    careful = open_registered(chest_dir, SIGMA, name="torch-cuda-careful", precision="fp16", layout="channels_last",
                              batch_size=None)
    assert careful.record["backend"] == "torch-cuda-careful" and careful.record["layout"] == "channels_last"
    with pytest.raises(CertsegError, match="torch-cuda layout 'channels_last'"):
        open_registered(chest_dir, SIGMA, name="torch-cuda-fused", layout="channels_last")
    with pytest.raises(CertsegError, match="torch-cuda-eager has no variant 'compiled'"):
        open_registered(chest_dir, SIGMA, name="torch-cuda-eager", variant="compiled")
    with pytest.raises(CertsegError, match="reference runner 'tensorrt' is unknown"):
        open_registered(chest_dir, SIGMA, name="tensorrt")


def test_forward_limit_times_the_model_alone_at_a_batch(image):
    dev = HostStandIn()
    backend = _backend(ToyLabels(), device=dev)
    per_sample = backend.forward_seconds_per_sample(image.shape, 4, repeats=3)
    assert per_sample > 0 and dev.fills == []  # the model alone: no noise kernel ran


# ---- torch.compile: the option's logic (dynamo traces the model here; inductor's code is the GPU tests') ----------

def _shifted_labels(gm, example):
    """A torch.compile backend whose 'compiled' model gives other labels than the model: parity must refuse it."""
    def run(*args):
        return type(out := gm(*args))(((t.to(torch.int16) + 1) % 3).to(t.dtype) for t in out)
    return run


def _failing(gm, example):
    raise RuntimeError("no Triton for this GPU")


def _noisy_inputs(image, count=4):
    from certseg_rt import kernels

    out = np.empty((count, *image.shape), np.float32)
    kernels.fill_noisy(image, SIGMA, 5, 0, out=out)
    return out


def test_compiled_fused_form_records_its_compile_and_parity_and_counts_as_uncompiled(image, monkeypatch, tmp_path):
    """compile_backend "eager": dynamo traces and guards the model (the batch dimension dynamic), no code generation:
    inductor takes ~30 s to compile even a tiny model on this CPU, so its own code is tested on a GPU (-m gpu)."""
    monkeypatch.setenv("CERTSEG_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/an-inherited-default")  # overridden: restored afterwards
    dev = HostStandIn()
    backend = _backend(ToyLabels(), device=dev, compile="compiled", compile_backend="eager")
    backend.compile_and_check(_noisy_inputs(image))
    rec = backend.record["compiled"]
    assert backend.record["backend"] == "torch-cuda:fused:compiled"
    assert rec["variant"] == "compiled" and rec["mode"] == "default" and rec["backend"] == "eager"
    assert rec["seconds"] > 0 and rec["parity"]["label_agreement"] == 1.0 and rec["parity"]["floor"] == 0.999
    assert rec["seconds_per_size"] == {f"{SIZE}x{SIZE}": rec["seconds"]} and rec["recompiles"] == 0
    assert np.array_equal(backend.sample_counts(image, 19, 3, 4), _backend(ToyLabels()).sample_counts(image, 19, 3, 4))
    assert (tmp_path / "inductor").is_dir()
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")


def test_compile_failure_and_poor_parity_are_one_line(image, monkeypatch):
    failing = _backend(ToyLabels(), compile="compiled", compile_backend=_failing)
    with pytest.raises(CertsegError) as e:
        failing.compile_and_check(_noisy_inputs(image))
    assert "torch.compile (_failing, mode default) failed: BackendCompilerFailed" in str(e.value)
    assert "no Triton for this GPU" in str(e.value) and "\n" not in str(e.value)
    shifted = _backend(ToyLabels(), precision="fp16", compile="compiled-autotune", compile_backend=_shifted_labels)
    with pytest.raises(CertsegError, match=r"compiled-autotune model at fp16 gives the labels of the uncompiled fp32 "
                                           r"model on 0\.\d+% of the pixels.*under the floor of 99\.5%"):
        shifted.compile_and_check(_noisy_inputs(image))
    import torch.utils._triton as triton

    monkeypatch.setattr(triton, "has_triton", lambda: False)
    from certseg_rt.runtime.backends.torch_compile import CompiledModel

    with pytest.raises(CertsegError, match="compile=True needs Triton for inductor's GPU kernels"):
        CompiledModel(ToyLabels(), device_type="cuda")
