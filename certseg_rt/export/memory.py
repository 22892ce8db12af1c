"""How much memory one sample of a batch needs: the peak of the live tensors of one forward pass.

Measured, not guessed: the model runs once at batch 1 under a ``TorchDispatchMode`` that adds the bytes
of every tensor an operator returns and subtracts them when the tensor is freed, so the peak is what a
runtime that frees each activation after its last use must hold at once.  Engines lay tensors out in
blocked formats and keep scratch per thread, so each runner multiplies this by a factor measured on its
own library (``runtime/backends/<backend>.py``: ``MEMORY``); the budget arithmetic is
``runtime.memory.fit_batch_size``.  Recorded at build time as the manifest's field ``memory``.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _LiveBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t._is_view():
                key = t.untyped_storage().data_ptr()
                if key in self._seen:  # in-place ops return their input's storage again
                    continue
                nbytes = t.untyped_storage().nbytes()
                self._seen.add(key)
                self.live += nbytes
                weakref.finalize(t, self._free, key, nbytes)  # the op's tensor dies with its storage here
        self.peak = max(self.peak, self.live)
        return out


def peak_activation_bytes(module: torch.nn.Module, example: torch.Tensor) -> int:
    """Peak bytes of tensors created by one forward pass of `module` on `example` (weights and input excluded)."""
    with torch.inference_mode():
        mode = _LiveBytes()
        with mode:
            module(example)
    return int(mode.peak)


def memory_profile(source, sigma: float) -> dict:
    """The manifest's field ``memory``: activation bytes of one sample of the fused graph, and its weights."""
    model = source.denoise_segment(sigma)
    per_sample = peak_activation_bytes(model, torch.rand(1, source.noise_channels, source.height, source.width))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"activation_bytes_per_sample": per_sample, "weights_bytes": int(weights),
            "method": "peak live tensors of one torch fp32 forward pass at batch 1"}
