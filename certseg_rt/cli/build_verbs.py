"""export and build-engine: users' models -> ONNX graphs -> engine directories."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..certify import DEFAULTS, check_parameters
from ..errors import CertsegError
from .common import (
    check_writable,
    intake_options,
    load_source_from_options,
    user_errors,
)
from ..export.builders import BUILDERS
from .group import main


@main.command("export")
@intake_options
@click.option("--sigma", type=float, default=DEFAULTS["sigma"], show_default=True, help="smoothing noise (sets t*)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder for the .onnx files")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True)
@click.option("--no-parity", is_flag=True, help="skip the ONNX Runtime vs torch parity check")
@click.option("--json", "as_json", is_flag=True, help="print metadata and parity as JSON")
@user_errors
def export_cmd(model, segmenter, segmenter_weights, segmenter_kwargs, classes, denoiser, image_size, sigma, out,
               exporter, no_parity, as_json):
    """Export model.onnx (x_noisy -> labels), segmenter.onnx and denoiser.onnx, parity-checked.

    \b
    Example:
      certseg-rt export --out onnx/ --sigma 0.25
    """
    from ..export.build import explain_export_failure
    from ..export.onnx_export import GRAPH_FILES, export_onnx
    from ..io import staged_files

    check_parameters(sigma=sigma)
    check_writable(out)
    source = load_source_from_options(model, segmenter, segmenter_weights, segmenter_kwargs, classes, denoiser, image_size)
    click.echo(f"exporting to {out} ({exporter})", err=True)
    # A failed export (parity too) leaves no file; an export that replaces an earlier one leaves none of its files.
    with staged_files(out, replaces=GRAPH_FILES) as stage, explain_export_failure():
        graphs = export_onnx(source, sigma, stage, exporter=exporter, parity=not no_parity,
                             log=lambda m: click.echo(m, err=True))
    result = {"graphs": [str(out / p.name) for p in (graphs.fused, graphs.segmenter, graphs.denoiser) if p],
              **graphs.metadata, "parity": graphs.parity}
    click.echo(json.dumps(result, indent=2) if as_json else
               f"wrote {', '.join(result['graphs'])}; parity: {json.dumps(graphs.parity)}")


@main.command("build-engine")
@intake_options
@click.option("--backend", type=click.Choice(list(BUILDERS)), default="onnxruntime", show_default=True)
@click.option("--sigma", type=float, default=DEFAULTS["sigma"], show_default=True, help="smoothing noise (sets t*)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="engine directory to create")
@click.option("--batch-sizes", default="1,16,64", show_default=True, help="MIN,OPT,MAX of the batch dimension")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "int8", "fp16", "bf16"]), default=None,
              help="onnxruntime: fp32 or int8 (static, phantom-calibrated); openvino: auto (build each precision this "
                   "CPU runs natively, keep the fastest that passes parity, measured here), fp32, bf16 (CPUs with "
                   "native bf16) or int8 (NNCF, phantom-calibrated); tensorrt: fp32, fp16, bf16  [default: auto for "
                   "openvino, else fp32]")
@click.option("--force", is_flag=True, help="keep an engine whose labels agree with torch fp32 below the floor")
@click.option("--workspace", type=int, default=1024, show_default=True, help="tensorrt: builder workspace, MiB")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="tensorrt: timing cache to start from [default: the replaced engine's]")
@click.option("--version-compatible", is_flag=True, help="tensorrt: engine runs on later TensorRT releases too")
@click.option("--hardware-compatible", is_flag=True, help="tensorrt: engine runs on any Ampere or newer GPU")
@click.option("--threads", type=int, default=None, help="intra-op threads recorded for the runtime [default: all cores]")
@click.option("--no-parity", is_flag=True, help="skip the parity check of the graphs against torch (recorded as "
                                                 "skipped in the manifest)")
@click.option("--memory-budget", type=int, default=None,
              help="MiB the parity check may use per chunk of samples [default: half the available memory]")
@click.option("--json", "as_json", is_flag=True, help="print the manifest as JSON")
@user_errors
def build_engine_cmd(model, segmenter, segmenter_weights, segmenter_kwargs, classes, denoiser, image_size, backend,
                     sigma, out, batch_sizes, exporter, precision, force, workspace, timing_cache, version_compatible,
                     hardware_compatible, threads, no_parity, memory_budget, as_json):
    """Build an engine directory: model file(s) + manifest.json (what is certified, hashes, tool versions).

    \b
    Example:
      certseg-rt build-engine --out engines/chest
      certseg-rt certify scan.png --engine engines/chest
      certseg-rt build-engine --backend openvino --out engines/chest-ov      # precision auto: measured here
      certseg-rt build-engine --backend tensorrt --precision fp16 --out engines/chest-trt
    """
    from ..export.build import build_engine, check_request

    check_parameters(sigma=sigma)
    if precision is None:
        precision = "auto" if backend == "openvino" else "fp32"
    try:
        sizes = tuple(int(v) for v in batch_sizes.split(","))
        assert len(sizes) == 3
    except (ValueError, AssertionError):
        raise CertsegError(f"--batch-sizes {batch_sizes!r} must be three integers MIN,OPT,MAX")
    trt = {"workspace_bytes": workspace << 20, "version_compatible": version_compatible,
           "hardware_compatible": hardware_compatible} if backend == "tensorrt" else {}
    if timing_cache is not None and backend == "tensorrt":
        trt["timing_cache_path"] = timing_cache
    if memory_budget is not None and memory_budget < 1:
        raise CertsegError(f"--memory-budget {memory_budget} must be >= 1 (MiB); omit it to use half the available "
                           f"memory")
    if precision == "auto" and (no_parity or force):
        raise CertsegError("--precision auto keeps the fastest precision whose parity with torch passes, so it runs "
                           "the parity check: drop --no-parity and --force, or name a --precision")
    if precision == "auto" and backend != "openvino":
        raise CertsegError(f"--precision auto is available for --backend openvino; name a precision for {backend}")
    # Before any heavy work: one line saying what is missing (auto: what its always-built fp32 needs).
    check_request(backend, "fp32" if precision == "auto" else precision, trt)
    check_writable(out)
    source = load_source_from_options(model, segmenter, segmenter_weights, segmenter_kwargs, classes, denoiser, image_size)
    manifest = build_engine(source, sigma, out, backend=backend, precision=precision, batch_sizes=sizes,
                            exporter=exporter, threads=threads, parity=not no_parity, force=force,
                            memory_budget=None if memory_budget is None else memory_budget << 20, options=trt,
                            log=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    else:
        sizes = manifest["batch_sizes"]
        batch = f"batch {sizes['opt']} fixed" if sizes.get("fixed") else f"batch {sizes['min']}..{sizes['max']}"
        chosen = " chosen by --precision auto" if "precision_choice" in manifest else ""
        click.echo(f"built {out} ({backend}, {manifest['precision']}{chosen}, sigma {sigma}, {batch}); "
                   f"{parity_summary(manifest['parity'])}")


def parity_summary(parity: dict) -> str:
    """What the parity check measured, in words (an ONNX segmenter has no torch reference for its labels)."""
    if parity.get("skipped"):
        return "parity not checked (--no-parity)"
    if "label_agreement" in parity:
        text = f"label agreement with torch {parity['label_agreement']:.4%}"
    elif "label_agreement_with_separate_graphs" in parity:
        text = (f"composed graph agrees with the denoiser and segmenter graphs run separately on "
                f"{parity['label_agreement_with_separate_graphs']:.4%} of pixels")
    else:
        return "parity: " + json.dumps({k: v for k, v in parity.items() if k != "batching"})
    if "denoised_max_abs_diff" in parity:
        text += f"; denoiser max abs diff vs torch {parity['denoised_max_abs_diff']:.2g}"
    return text
