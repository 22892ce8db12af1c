"""ONNX Runtime engines (CPU): the exported graphs with ONNX Runtime's portable optimisations applied
offline, and optionally static int8 quantisation of the fused graph (QDQ, calibrated on noisy phantoms)."""
from __future__ import annotations

import os
from pathlib import Path

from ...errors import CertsegError

PRECISIONS = ("fp32", "int8")


def check_request(precision: str, options: dict) -> None:
    if precision in ("bf16", "fp16"):
        # Measured with onnxruntime 1.32 on this project's graph: a bf16 cast fails to load ("Could not find an
        # implementation for Mul(14)"): the CPU execution provider has no bfloat16 arithmetic at all; an fp16
        # cast loads but runs slower than fp32 (its kernels convert back to fp32).
        raise CertsegError(f"--precision {precision} is not available for onnxruntime: its CPU execution provider has "
                           f"no {precision} arithmetic kernels (a {precision} graph "
                           f"{'does not load' if precision == 'bf16' else 'runs slower than fp32'}); use --precision "
                           f"int8 (AVX-512 VNNI) on a CPU, or --backend tensorrt --precision {precision} on a GPU")
    if precision not in PRECISIONS:
        raise CertsegError(f"--precision {precision} is not available for onnxruntime; choose one of "
                           f"{', '.join(PRECISIONS)}")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CertsegError("ONNX Runtime is not installed; pip install 'certseg-rt[cpu]'")


def optimise_offline(path: Path, threads: int) -> dict:
    """Apply ONNX Runtime's basic (portable, hardware-independent) graph optimisations offline, in place.

    Extended and layout optimisations depend on the machine that runs them, so they stay online.  A graph
    with external data keeps it external, under the same file name.
    """
    import shutil
    import tempfile

    import onnxruntime as ort

    from ...errors import CertsegError
    from ..intake.onnx_file import external_data_names

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 4  # a failure is raised as one line below, not logged to the terminal
    external = external_data_names(path)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.opt-", dir=path.parent))
    so.optimized_model_filepath = str(work / path.name)
    if external:
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", external[0])
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        try:
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime's Fail/InvalidGraph/NotImplemented
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CertsegError(f"ONNX Runtime {ort.__version__} cannot load the graph {path.name} ({first}); "
                               f"re-export the model at an opset this ONNX Runtime supports")
        # The session is gone, so its input files can be replaced.
        written = external_data_names(work / path.name)
        for name in set(external) - set(written):
            (path.parent / name).unlink(missing_ok=True)
        for name in [*written, path.name]:
            os.replace(work / name, path.parent / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"offline": "basic", "online": "all", "intra_op_num_threads": threads, "inter_op_num_threads": 1,
            "execution_mode": "sequential"}


def optimise_graphs(graphs, threads: int, log) -> dict:
    log("optimising for ONNX Runtime (offline: basic graph optimisations)")
    settings = {}
    for path in (graphs.fused, graphs.segmenter, graphs.denoiser):
        if path is not None:
            settings = optimise_offline(path, threads)
    return settings


def build(stage: Path, graphs, *, source, sigma, precision, batch_sizes, threads, parity, force, options, log) -> dict:
    import onnxruntime

    from ..onnx_export import INPUT_NAME, check_graphs, parity_inputs

    settings = optimise_graphs(graphs, threads, log)
    quantisation = None
    if precision == "int8":
        from ..onnx_files import EXTERNAL_DATA_THRESHOLD, external_data_files
        from ..quantize import quantize_int8

        # The quantiser writes one file: a fused graph with external data is brought inline, which protobuf
        # cannot do above 2 GB.
        if sum(f.stat().st_size for f in external_data_files(graphs.fused)) > EXTERNAL_DATA_THRESHOLD:
            raise CertsegError(f"--precision int8 needs the fused graph in one file, and {graphs.fused.name} keeps "
                               f"its weights in {graphs.fused.name}.data (a graph over protobuf's 2 GB limit); "
                               f"build --precision fp32")

        log("quantising to int8 (static, calibrated on noisy phantoms)")
        # calibration batches inside the engine's batch range (a fixed-batch graph takes only its batch)
        calibration_batch = min(max(4, batch_sizes[0]), batch_sizes[2])
        count = -(-32 // calibration_batch) * calibration_batch
        quantisation = quantize_int8(graphs.fused, parity_inputs(source, sigma, count, seed=7), INPUT_NAME,
                                     batch=calibration_batch)
    report = {"skipped": True}
    if parity:
        log("checking parity with torch on noisy phantoms")
        floor = 0.0 if force else (0.999 if precision == "fp32" else 0.99)
        report = check_graphs(source, sigma, graphs, min_agreement=floor, batch_sizes=batch_sizes,
                              memory_budget=options.get("memory_budget"))
    return {"graphs": {"fused": graphs.fused.name, "segmenter": graphs.segmenter.name},
            "onnxruntime": settings, "quantisation": quantisation, "parity": report,
            "tools": {"onnxruntime": onnxruntime.__version__}}
