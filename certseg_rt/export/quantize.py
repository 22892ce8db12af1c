"""Static int8 quantisation of the fused graph for ONNX Runtime on CPU (VNNI), calibrated on noisy phantoms.

The calibration inputs are what the graph sees when certifying: held-out phantoms plus the project's
keyed noise at the engine's sigma.  Convolutions (and GEMMs of the time embedding) become QDQ int8
with per-channel weights; normalisations, the one-step arithmetic and the argmax stay float.  The
quantised engine is certified as itself: what it may cost is certified Dice, reported by the build.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

QUANTIZED_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]


def quantize_int8(path: Path, calibration: np.ndarray, input_name: str, batch: int = 4) -> dict:
    """Quantise the ONNX model at `path` in place; returns the settings for the manifest."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class NoisyPhantoms(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i:i + batch] for i in range(0, len(calibration), batch))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {input_name: x}

    pre = path.with_suffix(".pre.onnx")
    out = path.with_suffix(".int8.onnx")
    try:
        quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), NoisyPhantoms(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=QUANTIZED_OPS)
        os.replace(out, path)
    finally:
        for p in (pre, out):
            if p.exists():
                p.unlink()
    return {"method": "onnxruntime static QDQ", "activations": "uint8", "weights": "int8 per-channel",
            "ops": QUANTIZED_OPS, "calibration": f"{len(calibration)} noisy held-out phantoms"}
