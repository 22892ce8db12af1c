"""Certify latency and quality per backend, precision, memory layout, image size and batch size, in one run
on one machine (``certseg-rt bench``).

Rows (each measured in its own subprocess, so peak RSS is the row's own; ``rows.ROW_KINDS``):

* ``reference-loop``: the published way: batch 1 torch eager, a per-pixel Python loop of tests;
* ``reference``: what a careful PyTorch user runs: torch eager in fp32 and bf16 (CPU autocast), each in NCHW
  and channels_last, batched (every reference runner of ``runtime.backends.REFERENCES``);
* ``engine``: certseg-rt engine directories of every registered builder and precision (ONNX Runtime fp32/int8,
  OpenVINO fp32/bf16/int8, TensorRT where a GPU is present), keyed noise and votes in the compiled extension;
* on a GPU (``gpu``): the careful torch-cuda baseline, the weak eager loop, the fused loop and its compiled
  variant, one process per size and n, and ``throughput`` rows (images/s, several images per batch).

Each row: median seconds of whole CERTIFY calls (n0 + n samples, noise, inference, votes, statistics) after a
warm-up, samples/s, peak RSS, certified Dice on a fixed set of held-out phantoms, achieved GFLOP/s and its
fraction of the peak of the precision it ran (``machine``).  The summary compares the fastest CPU engine
with the fastest torch row (``suite.summarize``).

Modules: ``machine`` (CPU, peaks, peak RSS), ``rows`` (one row), ``suite`` (the plan, a run, the summary),
``gpu`` (GPU peaks, the forward-pass limit, the GPU summary), ``markdown`` (the tables).
"""
from .machine import machine, peak_rss_mb
from .markdown import to_markdown
from .rows import ROW_KINDS, gflop_per_sample, run_row
from .suite import run, summarize

__all__ = ["ROW_KINDS", "gflop_per_sample", "machine", "peak_rss_mb", "run", "run_row", "summarize", "to_markdown"]
