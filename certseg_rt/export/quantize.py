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


def _inline_external_data(path: Path) -> list[Path]:
    """Rewrite a graph with external data as one file (under ONNX's 2 GB limit); returns the now unused sidecars."""
    import onnx

    from ..errors import CertsegError
    from .intake.onnx_file import external_data_names

    names = external_data_names(path)
    if not names:
        return []
    if sum((path.parent / n).stat().st_size for n in names) > (1 << 31) - (64 << 20):
        raise CertsegError("--precision int8 needs the fused graph in one file, and this one is over ONNX's 2 GB "
                           "limit; build it in fp32")
    onnx.save(onnx.load(str(path)), str(path))
    return [path.parent / n for n in names]


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
    sidecars = _inline_external_data(path)  # the quantiser's temporary copies would lose a sidecar
    try:
        quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), NoisyPhantoms(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=QUANTIZED_OPS)
        os.replace(out, path)
        for sidecar in sidecars:  # the quantised graph holds its weights inline
            sidecar.unlink(missing_ok=True)
    finally:
        for p in (pre, out):
            if p.exists():
                p.unlink()
    return {"method": "onnxruntime static QDQ", "activations": "uint8", "weights": "int8 per-channel",
            "ops": QUANTIZED_OPS, "calibration": f"{len(calibration)} noisy held-out phantoms"}
