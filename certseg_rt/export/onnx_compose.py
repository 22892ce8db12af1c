"""Segmenters torch cannot trace into a larger graph (a user's ONNX file, a TorchScript module): the fused graph
x_noisy -> denoiser -> segmenter -> argmax -> labels is composed at the ONNX level with ``onnx.compose``.

* Opsets: the parts are composed at the higher opset of the two; the denoiser graph (ours) is converted up
  with ``onnx.version_converter``, a user's graph is never converted down.
* External data: a segmenter that came with external data is copied with it (``segmenter.onnx.data``), and
  the fused graph is written the same way (``model.onnx.data``), each loadable from the engine directory alone.
* A fixed batch dimension in the segmenter graph makes the fused graph's batch that number.
* TorchScript: the TorchScript-based exporter first; when ONNX Runtime cannot run its graph (it mis-exports
  some scripted code, e.g. MONAI SegResNet's list indexing), the dynamo exporter, which fixes the batch of a
  TorchScript module (torch.export cannot see through the TorchScript interpreter's shapes).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import CertsegError
from .intake.onnx_file import OnnxSegmenterFile, default_opset, load_onnx_segmenter, save_copy

DYNAMO_OPSET = 18  # the dynamo exporter's own opset in torch 2.13


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def compose_fused(seg: OnnxSegmenterFile, denoiser_path: Path | None, out: Path, input_name: str, *,
                  metadata: dict, name: str, fixed_batch: int | None = None) -> dict:
    """Write x_noisy -> [denoiser ->] segmenter -> ArgMax -> uint8 labels (with `metadata`) to `out`; returns how
    it was made (for the manifest)."""
    import json

    import onnx
    from onnx import TensorProto, compose, helper, version_converter

    model = onnx.ModelProto()
    model.CopyFrom(seg.model)
    made = {"exporter": "onnx.compose", "parts": "denoiser graph -> segmenter graph -> ArgMax" if denoiser_path
            else "segmenter graph -> ArgMax"}
    if denoiser_path is not None:
        den = onnx.load(str(denoiser_path))
        den_opset, seg_opset = default_opset(den), seg.opset
        target = max(den_opset, seg_opset)
        if den_opset < target:
            try:
                den = version_converter.convert_version(den, target)
            except Exception as e:  # noqa: BLE001 - the converter raises plain RuntimeErrors and ValidationErrors
                raise CertsegError(f"cannot convert the denoiser graph from opset {den_opset} up to {name}'s opset "
                                   f"{target} ({_first_line(e)}); export the segmenter at opset {den_opset}")
            made["denoiser_graph_converted"] = f"opset {den_opset} -> {target}"
        if seg_opset < target:  # an older user graph goes up (never down)
            try:
                model = version_converter.convert_version(model, target)
            except Exception as e:  # noqa: BLE001
                raise CertsegError(f"cannot convert {name} from opset {seg_opset} up to the denoiser's opset "
                                   f"{target} ({_first_line(e)}); export the segmenter at opset {target} or higher")
            made["segmenter_graph_converted"] = f"opset {seg_opset} -> {target}"
        made["opset"] = target
        den.ir_version = model.ir_version = max(den.ir_version, model.ir_version)
        del den.metadata_props[:], model.metadata_props[:]  # the fused graph gets its own metadata below
        try:
            # io_map names the outputs and inputs as they are before merge_models applies prefix2.
            merged = compose.merge_models(den, model, io_map=[(den.graph.output[0].name, seg.input_name)],
                                          prefix2="seg/")
        except Exception as e:  # noqa: BLE001 - ValueError / ValidationError from onnx.compose
            raise CertsegError(f"cannot compose the denoiser graph with {name} ({_first_line(e)}); report the model")
        logits = "seg/" + model.graph.output[0].name
    else:
        made["opset"] = seg.opset
        del model.metadata_props[:]
        merged = compose.add_prefix(model, "seg/")
        merged.graph.input[0].name = input_name
        for node in merged.graph.node:
            node.input[:] = [input_name if x == "seg/" + seg.input_name else x for x in node.input]
        logits = merged.graph.output[0].name
    # One entry per domain: merge_models keeps an unset and an empty default domain apart, which tools then refuse.
    versions: dict[str, int] = {}
    for entry in merged.opset_import:
        domain = "" if entry.domain in ("", "ai.onnx") else entry.domain
        versions[domain] = max(versions.get(domain, 0), entry.version)
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(d, v) for d, v in versions.items())
    merged.graph.node.extend([
        helper.make_node("ArgMax", [logits], ["labels_int64"], axis=1, keepdims=0, select_last_index=0),
        helper.make_node("Cast", ["labels_int64"], ["labels"], to=TensorProto.UINT8),
    ])
    del merged.graph.output[:]
    merged.graph.output.append(helper.make_tensor_value_info("labels", TensorProto.UINT8,
                                                             [fixed_batch or "batch", None, None]))
    if fixed_batch:
        dim = merged.graph.input[0].type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = int(fixed_batch)
    for key, value in metadata.items():
        entry = merged.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    if seg.external_files:
        onnx.save_model(merged, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{Path(out).name}.data", size_threshold=1024)
    else:
        from .onnx_files import save_onnx

        save_onnx(merged, out)  # with external data above 2 GB (a large denoiser), read by path below
    try:
        onnx.checker.check_model(str(out))
    except Exception as e:  # noqa: BLE001 - ValidationError
        raise CertsegError(f"the graph composed from {name} does not check ({_first_line(e)}); report the model")
    return made


# ---- TorchScript segmenters ---------------------------------------------------------------------------------

class _Opaque(torch.nn.Module):
    """Calls a TorchScript module without registering it as a submodule: torch.export refuses a ScriptModule;
    its weights become constants of the exported graph."""

    def __init__(self, script):
        super().__init__()
        object.__setattr__(self, "script", script)

    def forward(self, x):
        return self.script(x)


def export_dynamo_fixed_batch(module, example, path: Path, input_name: str) -> None:
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and similar warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_Opaque(module).eval(), (example,), input_names=[input_name],
                                        output_names=["logits"], opset_version=DYNAMO_OPSET, dynamo=True,
                                        verbose=False)
            program.save(str(path), external_data=False)
    finally:
        quiet.setLevel(level)


def runs_in_onnxruntime(path: Path, module, shape: tuple[int, int, int], batches: tuple[int, ...]) -> str | None:
    """None if ONNX Runtime runs the graph at each batch size and its labels agree with torch's on random images;
    otherwise what went wrong, in one line."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # its error log would reach the user's terminal; the failure is reported instead
    rng = np.random.default_rng(0)
    try:
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for b in batches:
            x = rng.random((b, *shape), dtype=np.float32)
            got = session.run(None, {session.get_inputs()[0].name: x})[0]
            with torch.inference_mode():
                want = module(torch.from_numpy(x)).numpy()
            if got.shape != want.shape:
                return f"it gives {got.shape} for a batch of {b}, torch {want.shape}"
            if np.mean(got.argmax(1) == want.argmax(1)) < 0.99:
                return f"its labels differ from torch's for a batch of {b}"
    except Exception as e:  # noqa: BLE001 - onnxruntime's Fail/InvalidArgument/InvalidGraph
        return _first_line(e)
    return None


def export_torchscript_segmenter(source, path: Path, metadata: dict, batch: int, log) -> tuple[dict, int | None]:
    """segmenter.onnx from a TorchScript module; returns (how it was made, its fixed batch or None)."""
    from .onnx_export import INPUT_NAME, OPSET, _export

    shape = (source.channels, source.height, source.width)
    named = source.segmenter_file or "the TorchScript segmenter"
    try:
        _export(source.segmenter, torch.rand(2, *shape), path, INPUT_NAME, "logits", "torchscript", metadata)
        problem = runs_in_onnxruntime(path, source.segmenter, shape, batches=(1, 3))
    except Exception as e:  # noqa: BLE001 - the exporter raises many types on code it cannot translate
        problem = f"{type(e).__name__}: {_first_line(e)}"
    if problem is None:
        return {"exporter": "torchscript", "opset": OPSET}, None
    log(f"note: ONNX Runtime cannot run the TorchScript-based exporter's graph of {named} ({problem}); exporting "
        f"with the dynamo exporter, which fixes the batch of a TorchScript module: the engine takes batches of "
        f"exactly {batch}")
    from .onnx_export import _with_metadata

    try:
        export_dynamo_fixed_batch(source.segmenter, torch.rand(batch, *shape), path, INPUT_NAME)
        _with_metadata(path, metadata)
        second = runs_in_onnxruntime(path, source.segmenter, shape, batches=(batch,))
    except Exception as e:  # noqa: BLE001
        second = f"{type(e).__name__}: {_first_line(e)}"
    if second is not None:
        raise CertsegError(f"neither torch exporter gives a graph ONNX Runtime runs for {named} (torchscript: "
                           f"{problem}; dynamo: {second}); export it to ONNX yourself and pass --segmenter FILE.onnx")
    return {"exporter": "dynamo", "opset": DYNAMO_OPSET, "fixed_batch": batch,
            "why": f"ONNX Runtime cannot run the torchscript exporter's graph: {problem}"}, batch


def export_composed(source, out_dir: Path, denoiser: Path | None, metadata: dict, fused_metadata: dict, *,
                    input_name: str, batch: int, log) -> tuple[Path, Path, dict, int | None]:
    """(model.onnx, segmenter.onnx, how each was made, fixed batch or None) for an ONNX or TorchScript segmenter."""
    seg_path = Path(out_dir) / "segmenter.onnx"
    if source.segmenter_onnx is not None:
        name = str(source.segmenter_onnx)
        seg = load_onnx_segmenter(source.segmenter_onnx)
        save_copy(seg, seg_path)
        made = {"exporter": "the user's ONNX file, copied", "opset": seg.opset}
        fixed = seg.batch
    else:
        made, fixed = export_torchscript_segmenter(source, seg_path, {**metadata, "graph": "x -> segmenter logits"},
                                                   batch, log)
        name = f"the ONNX graph exported from {source.segmenter_file or 'the TorchScript segmenter'}"
        seg = load_onnx_segmenter(seg_path, name=name)
    fused = Path(out_dir) / "model.onnx"
    fused_made = compose_fused(seg, denoiser, fused, input_name, metadata=fused_metadata, name=name,
                               fixed_batch=fixed)
    return fused, seg_path, {"segmenter": made, "fused": fused_made}, fixed
