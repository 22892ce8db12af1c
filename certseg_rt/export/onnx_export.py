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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__, kernels
from ..errors import CertsegError
from .denoise_segment import DenoiseSegment, OneStepDenoiser
from .loaders import SourceModel

OPSET = 17
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAME = "x_noisy"


@dataclass
class ExportedGraphs:
    fused: Path  # x_noisy -> labels (uint8)
    segmenter: Path  # x -> logits
    denoiser: Path | None  # x_noisy -> denoised x in [0, 1]
    metadata: dict
    parity: dict


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
    return {
        "certseg_rt": __version__,
        "sigma": sigma,
        "timestep": None if step is None else step.timestep,
        "alpha_bar": None if step is None else step.alpha_bar,
        "classes": source.classes,
        "input": {"channels": source.channels, "height": source.height, "width": source.width,
                  "range": [0.0, 1.0], "size_multiple": source.size_multiple,
                  "normalisation": "x in [0, 1]; noise added in this range; denoiser maps to [-1, 1] inside"},
    }


def parity_inputs(source: SourceModel, sigma: float, count: int, seed: int = 20240) -> np.ndarray:
    """Noisy held-out phantoms, noised with the project's keyed noise: what the graph sees when certifying."""
    from ..data import HELD_OUT_SEEDS

    out = np.empty((count, source.channels, source.height, source.width), np.float32)
    for i in range(count):
        kernels.fill_noisy(source.phantom(HELD_OUT_SEEDS[500 + i // 4]).image, sigma, seed, i, out=out[i:i + 1])
    return out


def check_parity(source: SourceModel, sigma: float, fused: Path, segmenter: Path, denoiser: Path | None,
                 count: int = 16, min_agreement: float = 0.999) -> dict:
    """Run the exported graphs with ONNX Runtime next to torch on noisy phantoms."""
    import onnxruntime as ort

    x = parity_inputs(source, sigma, count)
    run = lambda path, inp: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {INPUT_NAME: inp})[0]
    with torch.inference_mode():
        torch_labels = source.denoise_segment(sigma)(torch.from_numpy(x)).numpy()
        step = source.one_step(sigma)
        denoised = OneStepDenoiser(source.unet, step)(torch.from_numpy(x)) if step else torch.from_numpy(x)
        torch_logits = source.segmenter(denoised).numpy()
    onnx_labels = run(fused, x)
    agreement = float(np.mean(onnx_labels == torch_labels))
    parity = {"inputs": f"{count} noisy held-out phantoms at sigma={sigma}", "label_agreement": agreement,
              "logits_max_abs_diff": float(np.abs(run(segmenter, denoised.numpy()) - torch_logits).max())}
    if denoiser is not None:
        parity["denoised_max_abs_diff"] = float(np.abs(run(denoiser, x) - denoised.numpy()).max())
    if agreement < min_agreement:
        raise CertsegError(f"the engine's graph agrees with torch on only {agreement:.4%} of pixels "
                           f"(need {min_agreement:.1%}); try another --exporter or --precision, or --force to "
                           f"accept it (it is certified as itself either way)")
    return parity


def export_onnx(source: SourceModel, sigma: float, out_dir: Path, *, exporter: str = "torchscript",
                parity: bool = True) -> ExportedGraphs:
    """Write model.onnx (fused, labels), segmenter.onnx and (with a denoiser) denoiser.onnx into out_dir."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CertsegError(f"cannot write to {out_dir}: {e.strerror}; choose a writable --out")
    meta = graph_metadata(source, sigma)
    example = torch.rand(2, source.channels, source.height, source.width)
    den = None
    step = source.one_step(sigma)
    if step is not None:
        den = _export(OneStepDenoiser(source.unet, step), example, out_dir / "denoiser.onnx", INPUT_NAME,
                      "denoised", exporter, {**meta, "graph": "x_noisy -> one-step DDPM denoised x in [0, 1]"})
    fused_meta = {**meta, "graph": "x_noisy -> one-step denoise -> segmenter -> argmax labels"}
    if source.segmenter_onnx is not None or isinstance(source.segmenter, torch.jit.ScriptModule):
        # A segmenter torch cannot trace into a larger graph (ONNX, TorchScript): export or copy it alone
        # and compose the fused graph at the ONNX level.
        from .onnx_compose import compose_fused

        seg = out_dir / "segmenter.onnx"
        if source.segmenter_onnx is not None:
            shutil.copyfile(source.segmenter_onnx, seg)
        else:
            _export(source.segmenter, example, seg, INPUT_NAME, "logits", "torchscript",
                    {**meta, "graph": "x -> segmenter logits"})
        fused = _with_metadata(compose_fused(seg, den, out_dir / "model.onnx", INPUT_NAME), fused_meta)
    else:
        fused = _export(source.denoise_segment(sigma), example, out_dir / "model.onnx", INPUT_NAME, "labels",
                        exporter, fused_meta)
        seg = _export(DenoiseSegment(source.segmenter, None, output="logits"), example, out_dir / "segmenter.onnx",
                      INPUT_NAME, "logits", exporter, {**meta, "graph": "x -> segmenter logits"})
    graphs = ExportedGraphs(fused=fused, segmenter=seg, denoiser=den, metadata=meta, parity={"skipped": True})
    if parity:
        graphs.parity = check_graphs(source, sigma, graphs)
    return graphs


def check_graphs(source: SourceModel, sigma: float, graphs: ExportedGraphs, min_agreement: float = 0.999) -> dict:
    """Parity of exported graphs: against torch, or (ONNX segmenter) against the graphs run separately."""
    if source.segmenter_onnx is None:
        return check_parity(source, sigma, graphs.fused, graphs.segmenter, graphs.denoiser,
                            min_agreement=min_agreement)
    from .onnx_compose import composition_parity

    x = parity_inputs(source, sigma, 8)
    report = {"inputs": f"8 noisy held-out phantoms at sigma={sigma}",
              **composition_parity(graphs.fused, graphs.segmenter, graphs.denoiser, x)}
    if graphs.denoiser is not None:
        import onnxruntime as ort

        with torch.inference_mode():
            ref = OneStepDenoiser(source.unet, source.one_step(sigma))(torch.from_numpy(x)).numpy()
        got = ort.InferenceSession(str(graphs.denoiser), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]
        report["denoised_max_abs_diff"] = float(np.abs(got - ref).max())
    if report["label_agreement_with_separate_graphs"] < min_agreement:
        raise CertsegError(f"composed graph agrees with the separate graphs on only "
                           f"{report['label_agreement_with_separate_graphs']:.4%} of pixels; report the model")
    return report
