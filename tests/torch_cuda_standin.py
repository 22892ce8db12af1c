"""A stand-in for torch_cuda_device.CudaDevice where no GPU exists, and small models for the torch-cuda tests.

``HostStandIn`` makes the same calls on the CPU: the compiled extension's host kernels for the packed noise and
votes (the same per-element bodies and unit mapping as the CUDA kernels, cpp_ext/include/certseg/kernels.h), the
counter moved as the one-thread kernel moves it, a recorded step for a CUDA graph, and device memory modelled as
``fixed + batch * per_sample`` bytes.  A stand-in, because no CUDA device exists here: it proves the host-side
bookkeeping (plans, counters, buffers, packing, the record), not the CUDA calls, which the ``gpu`` tests check.
"""
import time

import numpy as np
import torch

from certseg_rt.runtime.backends import torch_cuda_device


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
    """Stands in for CudaDevice (see the module docstring)."""

    type = "cpu"
    device = torch.device("cpu")

    def __init__(self, fail_capture: bool = False, free: int = 64 << 30, per_sample: int = 1 << 20, fixed: int = 0,
                 oom_above: int | None = None, keep_noise: bool = False,
                 warmup_steps: int = torch_cuda_device.WARMUP_STEPS):
        from certseg_rt._ext_loader import ext

        self.ext = ext
        self.fail_capture = fail_capture
        self.warmup_steps = warmup_steps  # the real warm-up's count; 0 where a test only needs the capture's run
        self.free, self.per_sample, self.fixed, self.oom_above = free, per_sample, fixed, oom_above
        self.fills = []  # (next sample, images, rows per image) of every noise launch
        self.keep_noise = keep_noise
        self.noise = []  # (seed, next, x, the noisy rows) of every launch outside warm-up and capture (keep_noise)
        self.uncaptured = []  # rows of the batches run outside a graph (warm-up and capture excluded)
        self.captured = []  # (images, rows per image) of every capture
        self.replays = 0
        self.released = 0
        self.in_graph = False  # inside warm-up, capture or replay
        self.capturing = False  # inside warm-up or capture

    def properties(self):
        return {"device": "stand-in (no GPU)", "compute_capability": "0.0", "cuda": None}

    def fill_noisy_packed(self, x, sigma, counter, out):
        assert out.is_contiguous() and x.is_contiguous() and out.shape[1:] == x.shape[1:]
        if self.oom_above is not None and out.shape[0] > self.oom_above:
            raise torch.cuda.OutOfMemoryError(f"stand-in: a batch of {out.shape[0]} does not fit")
        self.fills.append((int(counter[1]), x.shape[0], out.shape[0] // x.shape[0]))
        self.ext.fill_noisy_packed(x.numpy(), sigma, counter.numpy(), out.numpy())
        if self.keep_noise and not self.capturing:
            self.noise.append((int(counter[0]) % 2**64, int(counter[1]) % 2**64, x.clone(), out.clone()))

    def accumulate_votes_packed(self, labels, counts, bad_label, counter):
        if not self.in_graph:
            self.uncaptured.append(labels.shape[0])
        lab, cnt, ctr = labels.numpy(), counts.numpy(), counter.numpy()
        try:
            self.ext.accumulate_votes_packed(lab, cnt, ctr)
        except ValueError:  # the CUDA kernel's contract: in-range votes counted, the largest bad label kept
            images, classes = cnt.shape[:2]
            rows = lab.shape[0] // images
            valid = int(max(0, min(rows, int(ctr[2]) - int(ctr[1]))))
            for i in range(images):
                mine = lab[i * rows:i * rows + valid]
                for c in range(classes):
                    cnt[i, c] += (mine == c).sum(0, dtype=np.int32)
                if valid and int(mine.max()) >= classes:
                    bad_label[0] = max(int(bad_label[0]), int(mine.max()))

    def advance_counter(self, counter, samples):
        counter[1] += samples

    def capture(self, step):
        if self.fail_capture:
            raise RuntimeError("stand-in: this model cannot be captured")
        self.in_graph = self.capturing = True
        try:
            for _ in range(self.warmup_steps):  # like the real warm-up, these run the whole step
                step()
            output = step()
            self.captured.append(getattr(step, "args", None))
            return StandInGraph(step, self), output
        finally:
            self.in_graph = self.capturing = False

    def synchronize(self):
        pass

    def free_memory(self):
        return self.free

    def allocated(self):
        return 0

    def activation_bytes(self, run, example):
        run(example)
        return self.fixed + example.shape[0] * self.per_sample

    def release(self):
        self.released += 1

    def seconds(self, fn, repeats):
        """One timed call: a CPU time says nothing of a GPU's, and the tests check only that it is a time."""
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def generator(self, seed):
        return torch.Generator().manual_seed(seed)

    def pinned(self, t):
        return t


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


class ConstantLabels(torch.nn.Module):
    """A 'model' whose labels are `value` everywhere: the out-of-range check's input."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], *x.shape[2:]), self.value, dtype=torch.uint8)
