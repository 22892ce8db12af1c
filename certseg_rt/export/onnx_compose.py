"""A user's ONNX segmenter behind our exported denoiser: compose the fused graph at the ONNX level.

torch cannot run an ONNX segmenter, so the fused graph x_noisy -> denoiser -> segmenter -> argmax
-> labels is assembled with ``onnx.compose`` from the denoiser graph exported from torch and the
user's file; its parity check compares it with running the two graphs one after the other.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CertsegError


def load_onnx_segmenter(path: Path):
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError, ValidationError, OSError...
        raise CertsegError(f"cannot load ONNX segmenter {path} ({str(e).strip().splitlines()[0][:160]}); "
                           f"the file is corrupt or not ONNX")
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise CertsegError(f"ONNX segmenter {path} must have one input (B, C, H, W) and one output "
                           f"(B, classes, H, W); it has {len(inputs)} inputs and {len(model.graph.output)} outputs")
    return model


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def segmenter_signature(path: Path) -> tuple[int | None, int | None]:
    """(input channels, output classes) as declared by the ONNX segmenter (None where dynamic)."""
    model = load_onnx_segmenter(path)
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    in_dims, out_dims = _dims(inputs[0]), _dims(model.graph.output[0])
    return (in_dims[1] if len(in_dims) == 4 else None), (out_dims[1] if len(out_dims) == 4 else None)


def compose_fused(segmenter_path: Path, denoiser_path: Path | None, out: Path, input_name: str) -> Path:
    """Write x_noisy -> [denoiser ->] segmenter -> ArgMax -> uint8 labels to `out`."""
    import onnx
    from onnx import TensorProto, compose, helper, version_converter

    seg = load_onnx_segmenter(segmenter_path)
    seg_in = [i for i in seg.graph.input if i.name not in {t.name for t in seg.graph.initializer}][0].name
    if denoiser_path is not None:
        den = onnx.load(str(denoiser_path))
        den_opset = next(o.version for o in den.opset_import if o.domain in ("", "ai.onnx"))
        seg_opset = next(o.version for o in seg.opset_import if o.domain in ("", "ai.onnx"))
        if seg_opset != den_opset:
            try:
                seg = version_converter.convert_version(seg, den_opset)
            except Exception as e:
                raise CertsegError(f"cannot bring the ONNX segmenter from opset {seg_opset} to {den_opset} ({e}); "
                                   f"re-export it at opset {den_opset}")
        seg.ir_version = den.ir_version
        del den.metadata_props[:], seg.metadata_props[:]  # the fused graph gets its own metadata afterwards
        # io_map names the outputs and inputs as they are before merge_models applies prefix2.
        merged = compose.merge_models(den, seg, io_map=[(den.graph.output[0].name, seg_in)], prefix2="seg/")
        logits = "seg/" + seg.graph.output[0].name
    else:
        merged = compose.add_prefix(seg, "seg/")
        merged.graph.input[0].name = input_name
        for node in merged.graph.node:
            node.input[:] = [input_name if x == "seg/" + seg_in else x for x in node.input]
        logits = merged.graph.output[0].name
    merged.graph.node.extend([
        helper.make_node("ArgMax", [logits], ["labels_int64"], axis=1, keepdims=0, select_last_index=0),
        helper.make_node("Cast", ["labels_int64"], ["labels"], to=TensorProto.UINT8),
    ])
    del merged.graph.output[:]
    merged.graph.output.append(helper.make_tensor_value_info("labels", TensorProto.UINT8, ["batch", None, None]))
    from .onnx_files import save_onnx

    save_onnx(merged, out)  # with external data above 2 GB, which the checker then reads by path
    onnx.checker.check_model(str(out))
    return out


def composition_parity(fused: Path, segmenter: Path, denoiser: Path | None, x: np.ndarray) -> dict:
    """The composed graph against the two graphs run one after the other, on the same noisy inputs."""
    import onnxruntime as ort

    session = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    run = lambda s, inp: s.run(None, {s.get_inputs()[0].name: inp})[0]
    stage = run(session(denoiser), x) if denoiser is not None else x
    expected = np.argmax(run(session(segmenter), stage), axis=1).astype(np.uint8)
    got = run(session(fused), x)
    return {"label_agreement_with_separate_graphs": float(np.mean(got == expected))}
