"""OpenVINO engines (CPU, x86 edge boxes): the fused ONNX graph converted to OpenVINO IR.

* fp32: ``openvino.convert_model`` of the fused graph, saved with ``compress_to_fp16=False`` (weights stay
  float32), compiled with ``INFERENCE_PRECISION_HINT`` f32;
* bf16: the same IR, compiled with the hint bf16: OpenVINO's CPU plugin executes it in bfloat16 on AVX-512
  BF16 / AMX; refused, in one line, on a CPU whose plugin does not report native BF16;
* int8: NNCF post-training quantisation of the IR (``export/builders/openvino_int8.py``), calibrated on
  noisy phantoms of the model's modality; what it keeps in float is said there;
* auto (the CLI's default for openvino): each of ``native_precisions()`` built and timed on this CPU, the
  fastest that passes parity kept (``export/auto_precision.py``).

The engine directory (the contract with the runtime, ``runtime/backends/openvino.py``, and the native C++
runtime): ``model.xml``/``model.bin`` (fused: x_noisy -> labels), ``segmenter.xml``/``segmenter.bin``
(x -> logits, clean Dice), the ONNX graphs they came from, and the manifest fields ``graphs``, ``openvino``
(version, inference_precision (the hint the runtime sets, read back and checked), executed_precision and
executed_layers (the compute layers' precisions in the compiled model's runtime graph), cpu_isa, threads,
performance_hint, batching), ``quantisation`` (int8), ``parity`` and ``tools.openvino``.

OpenVINO documentation used: ``openvino.convert_model``, ``openvino.save_model(..., compress_to_fp16=False)``,
``Model.set_rt_info``, ``Core.compile_model`` with ``INFERENCE_PRECISION_HINT``, ``CompiledModel.get_property``,
``CompiledModel.get_runtime_model`` (rt_info ``layerType``, ``runtimePrecision``) (2026.4).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import CertsegError

PRECISIONS = ("fp32", "bf16", "int8")
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: its float parts stay f32
PARITY_FLOOR = {"fp32": 0.999, "bf16": 0.999, "int8": 0.99}
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")


def check_request(precision: str, options: dict) -> None:
    if precision not in PRECISIONS:
        raise CertsegError(f"--precision {precision} is not available for openvino; choose one of "
                           f"{', '.join(PRECISIONS)} (fp16 is a GPU precision: --backend tensorrt)")
    from ...runtime.backends.openvino import import_nncf, import_openvino, require_native_bf16

    openvino = import_openvino()
    if precision == "bf16":
        require_native_bf16(openvino.Core(), "--precision bf16")
    if precision == "int8":
        try:
            import_nncf()
        except ImportError:
            raise CertsegError("--precision int8 for openvino needs NNCF; pip install 'certseg-rt[export]'")


def native_precisions() -> tuple[list[str], dict[str, str]]:
    """(the precisions this CPU runs natively, {precision: why not} for the others): what ``--precision auto``
    builds and measures.  bf16 only where the CPU plugin reports native BF16 (emulated, it would be slow and
    another model); int8 where NNCF is installed and the plugin reports INT8."""
    from ...runtime.backends.openvino import cpu_capabilities, import_nncf, import_openvino

    caps = cpu_capabilities(import_openvino().Core())
    native, not_tried = ["fp32"], {}
    if "BF16" in caps:
        native.append("bf16")
    else:
        not_tried["bf16"] = f"no native BF16 on this CPU (OpenVINO reports {', '.join(caps) or 'nothing'})"
    try:
        import_nncf()
    except ImportError:
        not_tried["int8"] = "NNCF is not installed (pip install 'certseg-rt[export]')"
    else:
        if "INT8" in caps:
            native.append("int8")
        else:
            not_tried["int8"] = f"no INT8 on this CPU (OpenVINO reports {', '.join(caps) or 'nothing'})"
    return native, not_tried


def cpu_name() -> str:
    """The CPU as OpenVINO's plugin names it (FULL_DEVICE_NAME)."""
    from ...runtime.backends.openvino import import_openvino

    return str(import_openvino().Core().get_property("CPU", "FULL_DEVICE_NAME"))


def cpu_isa() -> list[str]:
    """The instruction-set extensions of this CPU that decide what OpenVINO's CPU plugin can run fast."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
              "amx_int8")
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        line = ""
    flags = set(line.partition(":")[2].split())
    return [f for f in wanted if f in flags]


def convert(onnx_path: Path, metadata: dict):
    """The ONNX graph as an OpenVINO model, with the sigma and classes it is built for in its rt_info."""
    from ...runtime.backends.openvino import import_openvino

    ov = import_openvino()
    model = ov.convert_model(str(onnx_path))
    for key, value in metadata.items():
        model.set_rt_info(value if isinstance(value, str) else json.dumps(value), ["certseg_rt", key])
    return model


def executed_precision(layers: dict[str, int]) -> str:
    """'f32', 'bf16', or e.g. 'i8+f32': the precisions the compute layers run at, most layers first."""
    return "+".join(sorted(layers, key=lambda p: -layers[p])) or "unknown"


def executed_layers(compiled) -> dict[str, int]:
    """How many compute layers (convolutions, matrix products) the compiled model runs at each precision."""
    counts = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in COMPUTE_LAYERS:
            counts[info["runtimePrecision"].astype(str)] += 1
    return dict(sorted(counts.items()))


def static_runner(core, model, properties: dict):
    """x -> the model's first output, compiled for x's batch (the one compiled last is kept)."""
    from ...runtime.backends.openvino import compile_static

    compiled = {}

    def run(x):
        if len(x) not in compiled:
            compiled.clear()  # one compiled model at a time: parity runs within the build's memory budget
            compiled[len(x)] = compile_static(core, model, len(x), properties).create_infer_request()
        return compiled[len(x)].infer({0: x})[0].copy()
    return run


def check_parity(source, sigma: float, fused, segmenter, properties: dict, *, floor: float, plan,
                 reference=None, count: int = 16) -> dict:
    """Labels of the compiled IR at the engine's precision against torch fp32 on noisy held-out phantoms,
    and the segmenter's logits on the same denoised inputs, in chunks the engine's batch range and the build's
    memory budget allow (``parity.BatchPlan``).  A segmenter given as an ONNX file (torch cannot run it) is
    compared with ``reference``, the unquantised fused graph in OpenVINO at f32."""
    from ...runtime.backends.openvino import compile_properties, import_openvino

    ov = import_openvino()
    from ..onnx_export import parity_inputs

    core = ov.Core()
    x = parity_inputs(source, sigma, count)
    report = {"inputs": f"{count} noisy held-out phantoms at sigma={sigma}"}
    if source.segmenter is None:
        f32 = compile_properties("f32", properties["INFERENCE_NUM_THREADS"])
        want = plan.run("openvino f32 reference", static_runner(core, reference, f32), x)
        report["reference"] = "the fused ONNX graph in OpenVINO f32 (the segmenter is an ONNX file torch cannot run)"
    else:
        from ..parity import torch_runner

        model = source.denoise_segment(sigma).eval()
        want = plan.run("torch fused", torch_runner(model), x)
        denoiser = source.one_step_denoiser(sigma)
        denoised = x if denoiser is None else plan.run("torch denoiser", torch_runner(denoiser.eval()), x)
        segment = source.segmenter.eval()
        want_logits = plan.run("torch segmenter", torch_runner(segment), denoised)
        report["reference"] = "torch fp32"
        got_logits = plan.run("openvino segmenter", static_runner(core, segmenter, properties), denoised)
        report["logits_max_abs_diff"] = float(np.abs(got_logits - want_logits).max())
    agreement = float(np.mean(plan.run("openvino fused", static_runner(core, fused, properties), x) == want))
    report["label_agreement"] = agreement
    if agreement < floor:
        raise CertsegError(f"the OpenVINO engine agrees with {report['reference'].split(' (')[0]} on only "
                           f"{agreement:.4%} of pixels (need {floor:.1%}); try another --precision, or --force to "
                           f"accept it (it is certified as itself either way)")
    return report


def build(stage: Path, graphs, *, source, sigma, precision, batch_sizes, threads, parity, force, options, log) -> dict:
    from ...runtime.backends.openvino import BATCHING, compile_properties, compile_static, import_openvino

    ov = import_openvino()
    metadata = {"sigma": sigma, "classes": source.classes, "input": graphs.metadata["input"]}
    log("converting to OpenVINO IR")
    fused = convert(graphs.fused, {**metadata, "graph": "x_noisy -> labels"})
    segmenter = convert(graphs.segmenter, {**metadata, "graph": "x -> segmenter logits"})
    quantisation, unquantised = None, fused
    if precision == "int8":
        from ..onnx_export import parity_inputs
        from .openvino_int8 import quantize_int8

        log("quantising to int8 with NNCF (calibrated on noisy phantoms)")
        fused, quantisation = quantize_int8(fused, parity_inputs(source, sigma, 32, seed=7))
    ov.save_model(fused, str(stage / "model.xml"), compress_to_fp16=False)
    ov.save_model(segmenter, str(stage / "segmenter.xml"), compress_to_fp16=False)
    properties = compile_properties(INFERENCE_PRECISION[precision], threads)
    compiled = compile_static(ov.Core(), fused, batch_sizes[1], properties)  # what the runtime compiles
    report = {"skipped": True}
    if parity:
        from ..parity import BatchPlan, PeakMemory

        log("checking parity with torch fp32 on noisy phantoms")
        plan = BatchPlan.for_engine(batch_sizes, getattr(graphs, "fixed_batch", None), options.get("memory_budget"))
        with PeakMemory() as peak:
            report = check_parity(source, sigma, fused, segmenter, properties, reference=unquantised, plan=plan,
                                  floor=0.0 if force else PARITY_FLOOR[precision])
        report["batching"] = {**plan.record(),
                              "peak_rss_growth_mib": None if peak.growth is None else round(peak.growth / (1 << 20))}
    version = ov.get_version()
    layers = executed_layers(compiled)
    return {"graphs": {"fused": "model.xml", "segmenter": "segmenter.xml"},
            "openvino": {"version": version, "inference_precision": INFERENCE_PRECISION[precision],
                         "executed_precision": executed_precision(layers), "executed_layers": layers, "cpu_isa": cpu_isa(), "threads": threads,
                         "performance_hint": "LATENCY", "batching": BATCHING},
            "quantisation": quantisation, "parity": report, "tools": {"openvino": version}}
