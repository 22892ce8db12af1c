"""bench: certify latency per backend, precision, layout and size, against the careful PyTorch baseline."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import CertsegError
from .common import memory_budget, model_dir, user_errors
from .group import main


def _items(value: str | None, option: str) -> list[str] | None:
    """'all' -> None (every registered row), otherwise the comma-separated items."""
    if value is None or value == "all":
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise CertsegError(f"{option} {value!r}: give comma-separated items or 'all'")
    return items


@main.command()
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="an engine directory for the first image size, used for its backend:precision row "
                   "[default: build one]")
@click.option("--sizes", default="128,256", show_default=True, help="image sizes")
@click.option("--batch-sizes", default="8,16,32", show_default=True, help="batch sizes to try (best one reported)")
@click.option("--engines", default="all", show_default=True,
              help="engine rows, BACKEND:PRECISION,... (e.g. openvino:bf16,onnxruntime:fp32); 'all': every "
                   "registered builder's precisions (--quick: tensorrt fp16 only); rows this machine cannot build "
                   "are listed with the reason")
@click.option("--references", default="all", show_default=True,
              help="reference (PyTorch) rows, RUNNER:PRECISION[:LAYOUT|VARIANT],... (e.g. "
                   "torch-eager:bf16:channels_last, torch-cuda-fused:fp16:compiled); 'all': every runner's precisions "
                   "and layouts (CPU: fp32 and bf16 in nchw and channels_last) and compiled rows")
@click.option("--gpu-only", is_flag=True, help="GPU rows only (torch-cuda careful, eager, fused and compiled, "
                                               "tensorrt): no reference loop, CPU engines or CPU torch rows")
@click.option("--n0", "n0", type=int, default=10, show_default=True, help="selection samples of every row")
@click.option("--n", "ns", default=None, help="estimation samples, comma-separated [default: 100 with --quick, "
                                             "else 100,1000]")
@click.option("--throughput", type=int, default=64, show_default=True,
              help="GPU rows: images per throughput row (each GPU form's fastest row certifying held-out phantoms, "
                   "several images per batch where it packs) at the first n; 0: none")
@click.option("--repeats", type=int, default=3, show_default=True, help="timed repeats per row (median reported)")
@click.option("--quick", is_flag=True, help="n=100 only, batch 16 only, 2 repeats")
@click.option("--no-reference-loop", is_flag=True, help="skip the published per-pixel loop's rows")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="memory budget of each row, e.g. 2G (batches are lowered to fit) [default: half the memory "
                   "available]")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write bench.json and bench.md here")
@click.option("--model", default="chest", show_default=True, help="bundled model name or model directory")
@click.option("--json", "as_json", is_flag=True, help="print {machine, rows, summary, skipped} as JSON")
@click.option("--cold", is_flag=True, help="instead: whole one-shot processes (certseg-rt certify --engine with an "
                                           "empty and a filled compiled-model cache, certseg-run, the careful torch "
                                           "script) and the first against a warm certify; --repeats paired rounds")
@click.option("--certseg-run", "certseg_run", type=click.Path(path_type=Path), default=None,
              help="with --cold: the native program's rows  [default: certseg-run on PATH]")
@user_errors
def bench(engine, sizes, batch_sizes, engines, references, gpu_only, n0, ns, throughput, repeats, quick,
          no_reference_loop, max_memory, out, model, as_json, cold, certseg_run):
    """Time certify on the bundled model: the published loop, torch eager (fp32/bf16 x NCHW/channels_last),
    and every engine backend (ONNX Runtime, OpenVINO); on a GPU machine also torch-cuda (the careful baseline,
    the weak eager loop, fused and compiled, fp32/fp16/bf16), throughput rows and TensorRT.

    Without --quick also n=1000 and a batch-size sweep.  Each row runs in its own process (peak RSS is the
    row's).  The summary compares the fastest CPU engine with the fastest torch row.

    \b
    Example:
      certseg-rt bench --quick
      certseg-rt bench --quick --engines openvino:bf16,openvino:int8 --references torch-eager:bf16:channels_last
      certseg-rt bench --json --out certseg-out/bench
      certseg-rt bench --quick --gpu-only          # on a GPU machine: torch-cuda (and TensorRT) rows
      certseg-rt bench --quick --gpu-only --n0 100 --n 1000 --throughput 0   # SegCertify's sample counts
      certseg-rt bench --cold --certseg-run build/native/runtime/certseg-run
    """
    if cold:
        return _cold(engine, sizes, repeats, certseg_run, model, out, as_json)
    from ..bench import run, to_markdown
    from ..io import atomic_path, write_json

    try:
        size_list = tuple(int(v) for v in sizes.split(","))
        batch_list = tuple(int(v) for v in batch_sizes.split(","))
        n_list = tuple(int(v) for v in ns.split(",")) if ns else ((100,) if quick else (100, 1000))
    except ValueError:
        raise CertsegError("--sizes, --batch-sizes and --n must be comma-separated integers")
    if n0 < 1 or min(n_list) < 1 or throughput < 0:
        raise CertsegError("--n0 and --n must be >= 1 and --throughput >= 0")
    if quick:
        batch_list, repeats = (16,), min(repeats, 2)

    def write(result: dict) -> None:  # after every row too: a stopped bench keeps the rows it has
        write_json(Path(out) / "bench.json", result)
        with atomic_path(Path(out) / "bench.md") as tmp:
            tmp.write_text(to_markdown(result))

    result = run(sizes=size_list, ns=n_list, n0=n0, batch_sizes=batch_list, engines=_items(engines, "--engines"),
                 references=_items(references, "--references"), repeats=repeats, reference_loop=not no_reference_loop,
                 engine_dir=engine, model=model_dir(model), quick=quick, max_memory=memory_budget(max_memory),
                 gpu_only=gpu_only, throughput=throughput, on_rows=write if out is not None else None,
                 log=lambda m: click.echo(m, err=True))
    if out is not None:
        write(result)
    click.echo(json.dumps(result, indent=2) if as_json else to_markdown(result))


def _cold(engine, sizes, repeats, certseg_run, model, out, as_json) -> None:
    """bench --cold: the one-shot rows (bench/cold.py)."""
    from ..bench.cold import run, to_markdown
    from ..io import atomic_path, write_json

    try:
        size_list = tuple(int(v) for v in sizes.split(","))
    except ValueError:
        raise CertsegError("--sizes must be comma-separated integers")
    if repeats < 1:
        raise CertsegError(f"--repeats {repeats} must be >= 1")
    if certseg_run is not None:
        import os

        if not certseg_run.is_file() or not os.access(certseg_run, os.X_OK):
            raise CertsegError(f"--certseg-run {certseg_run} is not an executable file; build the native runtime "
                               f"(README, Embedding in C and C++)")
    if engine is not None:
        from ..manifest import load_manifest

        m = load_manifest(engine)
        if m["backend"] != "openvino" or (m["input"]["height"], m["input"]["width"]) != (size_list[0],) * 2:
            raise CertsegError(f"--engine {engine} is {m['backend']} at {m['input']['height']}x{m['input']['width']}; "
                               f"--cold takes an openvino engine for the first size, {size_list[0]}")
    result = run(sizes=size_list, rounds=repeats, engine_dir=engine, certseg_run=certseg_run, model=model_dir(model),
                 log=lambda m: click.echo(m, err=True))
    table = to_markdown(result)
    if out is not None:
        write_json(Path(out) / "cold.json", result)
        with atomic_path(Path(out) / "cold.md") as tmp:
            tmp.write_text(table)
    click.echo(json.dumps(result, indent=2) if as_json else table)
