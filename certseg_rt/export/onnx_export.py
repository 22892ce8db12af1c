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
from .denoise_segment import DenoiseSegment
from .loaders import SourceModel

OPSET = 17
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAME = "x_noisy"
GRAPH_FILES = ("model.onnx", "segmenter.onnx", "denoiser.onnx")  # what export_onnx writes


@dataclass
class ExportedGraphs:
    fused: Path  # x_noisy -> labels (uint8)
    segmenter: Path  # x -> logits
    denoiser: Path | None  # x_noisy -> denoised x in [0, 1]
    metadata: dict
    parity: dict


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str,
            exporter: str, metadata: dict) -> Path:
    import onnx

    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                              opset_version=OPSET, dynamo=False,
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
        elif exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            prog = torch.onnx.export(module, (example,), input_names=[input_name], output_names=[output_name],
                                     opset_version=OPSET, dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
            prog.save(str(path), external_data=False)
        else:
            raise CertsegError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    return _with_metadata(path, metadata)


def _with_metadata(path: Path, metadata: dict) -> Path:
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(path))
    return path


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


def parity_inputs(source: SourceModel, sigma: float, count: int, seed: int = 20240) -> np.ndarray:
    """Noisy held-out phantoms, noised with the project's keyed noise: what the graph sees when certifying."""
    from ..data import HELD_OUT_SEEDS

    adapter = source.adapter  # noise in the noise space: the phantom replicated into the denoiser's channels
    out = np.empty((count, source.noise_channels, source.height, source.width), np.float32)
    for i in range(count):
        image = source.phantom(HELD_OUT_SEEDS[500 + i // 4]).image
        kernels.fill_noisy(image if adapter is None else adapter.image(image), sigma, seed, i, out=out[i:i + 1])
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
        one_step = source.one_step_denoiser(sigma)
        denoised = one_step(torch.from_numpy(x)) if one_step is not None else torch.from_numpy(x)
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
    seg_meta = {**meta, "graph": "x -> segmenter logits", "input": {**meta["input"], "channels": source.channels}}
    if source.segmenter_onnx is not None or isinstance(source.segmenter, torch.jit.ScriptModule):
        # A segmenter torch cannot trace into a larger graph (ONNX, TorchScript): export or copy it alone
        # and compose the fused graph at the ONNX level.
        from .onnx_compose import compose_fused

        seg = out_dir / "segmenter.onnx"
        if source.segmenter_onnx is not None:
            shutil.copyfile(source.segmenter_onnx, seg)
        else:
            _export(source.segmenter, image_example, seg, INPUT_NAME, "logits", "torchscript", seg_meta)
        fused = _with_metadata(compose_fused(seg, den, out_dir / "model.onnx", INPUT_NAME), fused_meta)
    else:
        fused = _export(source.denoise_segment(sigma), example, out_dir / "model.onnx", INPUT_NAME, "labels",
                        exporter, fused_meta)
        seg = _export(DenoiseSegment(source.segmenter, None, output="logits"), image_example, out_dir / "segmenter.onnx",
                      INPUT_NAME, "logits", exporter, seg_meta)
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
            ref = source.one_step_denoiser(sigma)(torch.from_numpy(x)).numpy()
        got = ort.InferenceSession(str(graphs.denoiser), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]
        report["denoised_max_abs_diff"] = float(np.abs(got - ref).max())
    if report["label_agreement_with_separate_graphs"] < min_agreement:
        raise CertsegError(f"composed graph agrees with the separate graphs on only "
                           f"{report['label_agreement_with_separate_graphs']:.4%} of pixels; report the model")
    return report
