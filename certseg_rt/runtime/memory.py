"""Memory budgets: how many samples a batch may hold so that a certify (or a build's parity check) stays within a
budget.

Peak memory grows with batch x pixels, so the batch is what a budget limits.  A runner knows its library's costs
(``MemoryCosts``, measured by benchmarks/memory_budget.py); the engine's manifest knows the model's (field memory:
activation bytes of one sample, weights; export/memory.py).  No part of this decides a certificate's numbers:
the batch it picks is recorded (reduced precision's labels depend on it, see sampling.GraphBackend.static_batch).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import CertsegError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_memory(value) -> int:
    """'2G', '1.5GiB', '512M', '2000000000' or a number of bytes -> bytes (binary units: 1G = 2**30)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in _UNITS:
            raise CertsegError(f"--max-memory {value!r} must be a size such as 2G, 1.5GiB or 512M")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _UNITS[unit])
    if size < 64 << 20:
        raise CertsegError(f"--max-memory {value} is under 64 MiB, less than the runtime itself needs; give e.g. 2G")
    return size


def available_memory() -> int:
    """Bytes this machine can give a new process now: MemAvailable (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def default_memory_budget() -> int:
    """Half of what is available now: room for the image, the caller and other processes."""
    return max(available_memory() // 2, 256 << 20)


@dataclass(frozen=True)
class MemoryEstimate:
    fixed: int  # bytes at any batch size
    per_sample: int  # bytes added by each sample of a batch

    def at(self, batch: int) -> int:
        return self.fixed + batch * self.per_sample


@dataclass(frozen=True)
class MemoryCosts:
    """What a runner's library adds to the model's own numbers, measured on it (peak RSS of a certify):
    ``peak ~= base_bytes + weights_factor * weights + batch * (activation_factor * activations + input/output)``."""

    base_bytes: int  # the process: Python, numpy, the library, the compiled engine's fixed buffers
    activation_factor: float  # blocked layouts, scratch, arenas: bytes held per byte of torch's live tensors
    weights_factor: float = 2.0  # the weights as read from the file plus the library's packed copy

    def estimate(self, manifest: dict) -> MemoryEstimate | None:
        """The estimate for an engine (None if its manifest has no field memory: an engine built before it)."""
        memory = manifest.get("memory")
        if memory is None:
            return None
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1 << 50
        if not isinstance(memory, dict) or not all(number(memory.get(k)) for k in
                                                   ("activation_bytes_per_sample", "weights_bytes")):
            from ..manifest import REBUILD

            raise CertsegError(f"engine field memory must give activation_bytes_per_sample and weights_bytes as "
                               f"numbers of bytes; {REBUILD}")
        inp = manifest["input"]
        pixels = int(inp["height"]) * int(inp["width"])
        io = pixels * (4 * int(inp["channels"]) + 1)  # the noisy float32 input and the uint8 labels of a sample
        counts = pixels * len(manifest["classes"]) * 4 * 2 + pixels * 8 * 8  # two vote arrays, the statistics
        return MemoryEstimate(
            fixed=int(self.base_bytes + self.weights_factor * memory["weights_bytes"] + counts),
            per_sample=int(self.activation_factor * memory["activation_bytes_per_sample"] + io))


def fit_batch_size(estimate: MemoryEstimate | None, budget: int, smallest: int, largest: int) -> int:
    """The largest batch in [smallest, largest] whose estimated peak fits the budget; one line if none does."""
    if estimate is None:
        return largest
    fits = (budget - estimate.fixed) // max(estimate.per_sample, 1)
    if fits < smallest:
        raise CertsegError(f"a batch of {smallest} needs about {estimate.at(smallest) / 2**30:.2f} GiB of memory, "
                           f"over the budget of {budget / 2**30:.2f} GiB; raise --max-memory, or rebuild the engine "
                           f"with a smaller minimum batch (--batch-sizes 1,...) or image size")
    return int(min(largest, fits))
