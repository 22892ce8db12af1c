"""torch -> ONNX: the fused certification graph plus the segmenter and denoiser alone.

Exporter: the TorchScript-based exporter (``dynamo=False``) at opset 17, pinned.  On these
UNets both torch 2.13 exporters lower GroupNorm to Reshape + InstanceNormalization + Reshape
(at opset 17/18), which ONNX Runtime and TensorRT 10/11 run natively and which the fp16 cast
pass can keep in fp32 by op type; the TorchScript path exports in ~2 s instead of ~13 s and
takes a plain ``dynamic_axes`` batch dimension.  ``exporter="dynamo"`` remains selectable; the
built-in parity check decides whether its graph is accepted either way.
"""
from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..errors import CertsegError
from .denoise_segment import DenoiseSegment
from .loaders import SourceModel

OPSET = 17
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAME = "x_noisy"
GRAPH_FILES = tuple(f"{g}.onnx{data}" for g in ("model", "segmenter", "denoiser") for data in ("", ".data"))  # what export_onnx writes


@dataclass
class ExportedGraphs:
    fused: Path  # x_noisy -> labels (uint8)
    segmenter: Path  # x -> logits
    denoiser: Path | None  # x_noisy -> denoised x in [0, 1]
    metadata: dict
    parity: dict
    fixed_batch: int | None = None  # the graphs take exactly this batch (a fixed batch in the segmenter's graph)
    made: dict = field(default_factory=dict)  # graph -> how it was made (exporter, opset, conversions)


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str,
            exporter: str, metadata: dict) -> Path:
    module = module.eval()
    # Export into a private folder: above 2 GB torch writes the weights as external data there (the
    # TorchScript exporter one file per tensor), and _with_metadata gathers them into NAME.onnx.data.
    work = path.parent / f".{path.name}.export"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    raw = work / path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                torch.onnx.export(module, (example,), str(raw), input_names=[input_name], output_names=[output_name],
                                  opset_version=OPSET, dynamo=False,
                                  dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
            elif exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=4096)
                prog = torch.onnx.export(module, (example,), input_names=[input_name], output_names=[output_name],
                                         opset_version=OPSET, dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
                prog.save(str(raw))  # external data only above 2 GB
            else:
                raise CertsegError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
        return _with_metadata(raw, metadata, out=path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _with_metadata(path: Path, metadata: dict, out: Path | None = None) -> Path:
    """Add metadata to the graph at `path` and save it to `out` (default: in place), checked.

    Over ``onnx_files.EXTERNAL_DATA_THRESHOLD`` the tensors go to OUT.data beside it (any external data the
    graph had, in whatever files, is gathered into that one); the checker then gets the path, as it must
    for a model over 2 GB.
    """
    import onnx

    from .onnx_files import external_data_files, save_onnx

    out = Path(out or path)
    stale = set(external_data_files(path))
    model = onnx.load(str(path))  # with its external data, if any
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    written = save_onnx(model, out)
    del model
    for old in stale - set(written):
        old.unlink(missing_ok=True)
    onnx.checker.check_model(str(out))
    return out


def graph_metadata(source: SourceModel, sigma: float) -> dict:
    step = source.one_step(sigma)
    adapter = source.adapter
    return {
        "certseg_rt": __version__,
        "sigma": sigma,
        "timestep": None if step is None else step.timestep,
        "alpha_bar": None if step is None else step.alpha_bar,
        # The manifest's field denoiser: what the one-step graph does (prediction type, learned variance,
        # the size it was trained at next to the engine's).
        "denoiser": None if step is None else {
            "timestep": step.timestep, "alpha_bar": step.alpha_bar, "timestep_mismatch": step.mismatch,
            **source.denoiser_spec.describe()},
        "classes": source.classes,
        # The noise space: the denoiser's channels (with an adapter, the image's replicated into them).
        "input": {"channels": source.noise_channels, "height": source.height, "width": source.width,
                  "range": [0.0, 1.0], "size_multiple": source.size_multiple,
                  "normalisation": "x in [0, 1]; noise added in this range; denoiser maps to [-1, 1] inside"},
        "adapter": None if adapter is None else adapter.describe(),
    }


def export_onnx(source: SourceModel, sigma: float, out_dir: Path, *, exporter: str = "torchscript",
                parity: bool = True, batch: int = 16, log=None) -> ExportedGraphs:
    """Write model.onnx (fused, labels), segmenter.onnx and (with a denoiser) denoiser.onnx into out_dir.

    batch: the batch of a graph that can only be exported with a fixed one (a TorchScript segmenter the
    TorchScript-based exporter fails on); log: where notes about the export go (stderr in the CLI).
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CertsegError(f"cannot write to {out_dir}: {e.strerror}; choose a writable --out")
    meta = graph_metadata(source, sigma)
    example = torch.rand(2, source.noise_channels, source.height, source.width)  # x_noisy, in the noise space
    image_example = torch.rand(2, source.channels, source.height, source.width)  # what the segmenter takes
    den = None
    denoiser = source.one_step_denoiser(sigma)
    if denoiser is not None:
        what = ("x_noisy -> one-step DDPM denoised x in [0, 1]" if meta["adapter"] is None else
                "x_noisy (replicated gray) -> one-step DDPM denoised x in [0, 1], mean of its channels")
        den = _export(denoiser, example, out_dir / "denoiser.onnx", INPUT_NAME, "denoised", exporter,
                      {**meta, "graph": what})
    fused_meta = {**meta, "graph": "x_noisy -> one-step denoise -> segmenter -> argmax labels"}
    # The segmenter alone takes the image as given (with an adapter, fewer channels than the noise space).
    seg_meta = {**meta, "graph": "x -> segmenter logits", "input": {**meta["input"], "channels": source.channels}}
    made = {"denoiser": {"exporter": exporter, "opset": OPSET}} if den is not None else {}
    fixed = None
    if source.segmenter_onnx is not None or isinstance(source.segmenter, torch.jit.ScriptModule):
        # A segmenter torch cannot trace into a larger graph (ONNX, TorchScript): export or copy it alone
        # and compose the fused graph at the ONNX level.
        from .onnx_compose import export_composed

        fused, seg, parts, fixed = export_composed(source, out_dir, den, seg_meta, fused_meta, input_name=INPUT_NAME,
                                                   batch=batch, log=log or (lambda m: None))
        made.update(parts)
    else:
        fused = _export(source.denoise_segment(sigma), example, out_dir / "model.onnx", INPUT_NAME, "labels",
                        exporter, fused_meta)
        seg = _export(DenoiseSegment(source.segmenter, None, output="logits"), image_example,
                      out_dir / "segmenter.onnx", INPUT_NAME, "logits", exporter, seg_meta)
        made.update({"segmenter": {"exporter": exporter, "opset": OPSET}, "fused": {"exporter": exporter,
                                                                                     "opset": OPSET}})
    graphs = ExportedGraphs(fused=fused, segmenter=seg, denoiser=den, metadata=meta, parity={"skipped": True},
                            fixed_batch=fixed, made=made)
    if parity:
        graphs.parity = check_graphs(source, sigma, graphs)
    return graphs


# Parity has its own module; builders and tests import these names from here too.
from .parity import check_graphs, parity_inputs  # noqa: F401, E402
