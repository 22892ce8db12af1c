"""bench: certify latency per backend, precision and size."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import CertsegError
from .common import model_dir, user_errors
from .group import main


@main.command()
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="fp32 engine directory for the first image size [default: build one]")
@click.option("--sizes", default="128,256", show_default=True, help="image sizes")
@click.option("--batch-sizes", default="8,16,32", show_default=True, help="batch sizes to try (best one reported)")
@click.option("--precisions", default="fp32,int8", show_default=True, help="ONNX Runtime precisions")
@click.option("--torch-precisions", default="fp32,bf16", show_default=True,
              help="torch eager precisions (bf16: CPU autocast via oneDNN); --quick takes fp32 only")
@click.option("--tensorrt-precisions", default="fp32,fp16,bf16", show_default=True,
              help="TensorRT engine precisions, rows only where TensorRT and a GPU are present ('none' to skip); "
                   "--quick takes fp16 only")
@click.option("--torch-cuda-precisions", default="fp32,fp16,bf16", show_default=True,
              help="torch-cuda precisions, eager and fused rows each, only where torch sees a CUDA device ('none' "
                   "to skip)")
@click.option("--gpu-only", is_flag=True, help="GPU rows only (torch-cuda, tensorrt): no reference loop, CPU torch "
                                               "or ONNX Runtime rows")
@click.option("--repeats", type=int, default=3, show_default=True, help="timed repeats per row (median reported)")
@click.option("--quick", is_flag=True, help="n=100 only, batch 16 only, 2 repeats (under 5 minutes here)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write bench.json and bench.md here")
@click.option("--model", default="chest", show_default=True, help="bundled model name or model directory")
@click.option("--json", "as_json", is_flag=True, help="print {machine, rows, summary} as JSON")
@user_errors
def bench(engine, sizes, batch_sizes, precisions, torch_precisions, tensorrt_precisions, torch_cuda_precisions,
          gpu_only, repeats, quick, out, model, as_json):
    """Time certify on the bundled model: the published loop, torch eager, ONNX Runtime fp32/int8, and
    torch-cuda (eager and fused) and TensorRT engines when a GPU is present.

    Without --quick also n=1000.  Each row runs in its own process (peak RSS is the row's).

    \b
    Example:
      certseg-rt bench --quick
      certseg-rt bench --json --out certseg-out/bench
      certseg-rt bench --quick --gpu-only          # on a GPU machine: torch-cuda (and TensorRT) rows
    """
    from ..bench import run, to_markdown
    from ..io import atomic_path, write_json

    try:
        size_list = tuple(int(v) for v in sizes.split(","))
        batch_list = tuple(int(v) for v in batch_sizes.split(","))
    except ValueError:
        raise CertsegError("--sizes and --batch-sizes must be comma-separated integers")
    precision_list = tuple(precisions.split(","))
    torch_list = ("fp32",) if quick else tuple(torch_precisions.split(","))
    if not set(torch_list) <= {"fp32", "bf16"} or "fp32" not in torch_list:
        raise CertsegError(f"--torch-precisions {torch_precisions}: fp32 (always) and optionally bf16")
    trt_list = () if tensorrt_precisions == "none" else tuple(tensorrt_precisions.split(","))
    if not set(trt_list) <= {"fp32", "fp16", "bf16"}:
        raise CertsegError(f"--tensorrt-precisions {tensorrt_precisions}: choose from fp32, fp16, bf16 (or none)")
    if quick and trt_list:
        trt_list = ("fp16",)
    cuda_list = () if torch_cuda_precisions == "none" else tuple(torch_cuda_precisions.split(","))
    if not set(cuda_list) <= {"fp32", "fp16", "bf16"}:
        raise CertsegError(f"--torch-cuda-precisions {torch_cuda_precisions}: choose from fp32, fp16, bf16 (or none)")
    ns = (100,) if quick else (100, 1000)
    if quick:
        batch_list, repeats = (16,), min(repeats, 2)
    result = run(sizes=size_list, ns=ns, batch_sizes=batch_list, precisions=precision_list, repeats=repeats,
                 torch_precisions=torch_list, tensorrt_precisions=trt_list, torch_cuda_precisions=cuda_list,
                 cpu_rows=not gpu_only,
                 engine_dir=engine, model=model_dir(model), log=lambda m: click.echo(m, err=True))
    table = to_markdown(result)
    if out is not None:
        write_json(Path(out) / "bench.json", result)
        with atomic_path(Path(out) / "bench.md") as tmp:
            tmp.write_text(table)
    click.echo(json.dumps(result, indent=2) if as_json else table)
