"""NNCF post-training int8 quantisation of an OpenVINO engine's fused graph, calibrated on noisy phantoms.

The calibration inputs are what the graph sees when certifying: held-out phantoms of the model's modality
plus the project's keyed noise at the engine's sigma (as for the ONNX Runtime int8 engine).  NNCF's
``PERFORMANCE`` preset (symmetric int8 weights and activations, per-channel weights) with fast bias
correction.  Kept in float, found from the graph's structure rather than from layer names (users' models
name their layers as they like):

* the one-step arithmetic (x_t from x_noisy; x0 from the noise prediction; the clip): elementwise, and NNCF
  does not quantise elementwise arithmetic that feeds no convolution;
* the final layer of each network: the convolution(s) that produce the denoiser's prediction (they feed
  the clip through elementwise ops only) and the segmenter's logits (they feed the argmax);
* normalisations (GroupNorm, lowered to MVN) and the argmax: NNCF quantises only the inputs of
  convolutions and matrix products, so these run in float (``INFERENCE_PRECISION_HINT`` f32).

Measured on the bundled chest model at 128x128: labels agree with torch fp32 on 99.86% of pixels of noisy
phantoms; keeping the residual additions in float too changed neither the agreement nor the time.

NNCF documentation used: ``nncf.quantize``, ``nncf.Dataset``, ``nncf.QuantizationPreset``,
``nncf.IgnoredScope(names=..., validate=False)`` (3.4).
"""
from __future__ import annotations

import numpy as np

CONVOLUTIONS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData",
                "MatMul")
# Ops a value passes through between a network's last convolution and the clip or argmax that follow it.
ELEMENTWISE = ("Add", "Subtract", "Multiply", "Divide", "Clamp", "Convert", "Reshape", "Squeeze", "Unsqueeze",
               "Slice", "StridedSlice", "Split", "VariadicSplit", "Transpose", "Concat", "Maximum", "Minimum")
HEADS = ("Clamp", "TopK", "ArgMax")  # the one-step clip, and the argmax over classes (TopK in OpenVINO)


def final_layers(model) -> list[str]:
    """Friendly names of the convolutions whose outputs reach a clip or the argmax through elementwise ops."""
    found, seen = [], set()
    stack = [op for op in model.get_ordered_ops() if op.get_type_name() in HEADS]
    while stack:
        op = stack.pop()
        for inp in op.inputs():
            src = inp.get_source_output().get_node()
            name = src.get_friendly_name()
            if name in seen:
                continue
            seen.add(name)
            if src.get_type_name() in CONVOLUTIONS:
                found.append(name)
            elif src.get_type_name() in ELEMENTWISE:
                stack.append(src)
    return sorted(found)


def quantize_int8(model, calibration: np.ndarray, batch: int = 4):
    """(quantised model, the manifest's quantisation settings)."""
    import contextlib
    import logging
    import sys

    from ...runtime.backends.openvino import import_nncf

    nncf = import_nncf()
    keep = final_layers(model)
    items = [calibration[i:i + batch] for i in range(0, len(calibration), batch)]
    nncf.set_log_level(logging.WARNING)  # its INFO lines and progress bars go to stdout, which is for results
    with contextlib.redirect_stdout(sys.stderr):
        quantised = nncf.quantize(model, nncf.Dataset(items), preset=nncf.QuantizationPreset.PERFORMANCE,
                                  subset_size=len(items), ignored_scope=nncf.IgnoredScope(names=keep, validate=False))
    return quantised, {"method": f"NNCF {nncf.__version__} post-training quantisation", "preset": "performance",
                       "activations": "int8 symmetric", "weights": "int8 per-channel", "float_layers": keep,
                       "calibration": f"{len(calibration)} noisy held-out phantoms"}
