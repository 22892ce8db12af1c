"""ONNX -> TensorRT engine (``model.engine``) for an engine directory, on TensorRT 10 and 11.

The network is strongly typed: TensorRT 11 removed the weak-typing precision flags (``BuilderFlag.FP16``,
``BF16``, ``INT8``), so the precision is that of the ONNX graph, made explicit beforehand by
``certseg_rt.export.precision.cast_precision`` (fp16/bf16 compute, normalisations and the timestep
embedding in fp32) and kept beside the engine as ``model.<precision>.onnx`` for the record.  One
optimisation profile covers the batch sizes (min, opt, max); the builder's workspace is limited; a
timing cache is loaded when given and saved beside the engine as ``timing.cache``; version and
hardware compatibility are optional and recorded.

The pure part (``plan_tensorrt_build``, ``check_build_target``, ``check_agreement``: shapes, file names,
manifest fields, refusal rules) is separate from the TensorRT calls (``build_tensorrt_engine``,
``agreement_vs_onnxruntime``), so it is tested without a GPU.

GPU name and compute capability come from the CUDA runtime through cuda-python (imported lazily):
the same binding the TensorRT runtime backend uses for memory, streams and graphs, so the GPU
extra has one CUDA binding, not torch (which the runtime must not need) and not ctypes on a
libcudart whose soname changes with each CUDA major version.

TensorRT Python API used, with the documentation it was checked against:
  ``Builder(logger)``, ``Builder.create_network(flags)`` with ``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)``
  (TensorRT 10.x; deprecated and ignored in 11.0, where strong typing is always on, so 11 passes 0),
  ``OnnxParser(network, logger).parse_from_file`` / ``num_errors`` / ``get_error(i).desc()``,
  ``OnnxParser.set_flag(OnnxParserFlag.NATIVE_INSTANCENORM)`` (10.x: the native layer rather than the
  InstanceNormalization plugin, which version/hardware-compatible engines require),
  ``Builder.create_builder_config``, ``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)``,
  ``Builder.create_optimization_profile`` + ``IOptimizationProfile.set_shape(name, min, opt, max)`` +
  ``IBuilderConfig.add_optimization_profile``, ``IBuilderConfig.create_timing_cache(blob)`` /
  ``set_timing_cache(cache, ignore_mismatch)`` / ``get_timing_cache().serialize()`` ("Optimizing Builder
  Performance", 10.16; ``ITimingCache``, 10.x/11.x), ``BuilderFlag.VERSION_COMPATIBLE`` ("Version
  Compatibility", 10.16; "Engine Compatibility", 11.1), ``IBuilderConfig.hardware_compatibility_level =
  HardwareCompatibilityLevel.AMPERE_PLUS`` (10.x/11.x), ``BuilderFlag.TF32`` cleared for fp32 builds,
  ``Builder.build_serialized_network`` (returns None on failure); removals in "Migrating from TensorRT
  10.x to 11.x" (11.0-11.4: BuilderFlag.FP16/BF16/INT8/..., platform_has_fast_fp16, device_memory_size).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CertsegError
from ...runtime.backends.tensorrt import ENGINE_NAME, INPUT_NAME, _version, rebuild_hint

TIMING_CACHE_NAME = "timing.cache"
PRECISIONS = ("fp32", "fp16", "bf16")
QUICK_PRECISIONS = ("fp16",)  # what `certseg-rt bench --quick` builds (each TensorRT build takes minutes)
DEFAULT_PRECISION = "fp16"
DEFAULT_WORKSPACE = 1 << 30  # 1 GiB for the builder's tactics; the engine itself usually needs far less
MIN_WORKSPACE = 1 << 20
MIN_AGREEMENT = 0.99  # labels of the engine vs ONNX Runtime fp32 on noisy phantoms
NEEDS_AMPERE = {"bf16": "bf16 kernels", "hardware_compatible": "hardware compatibility (level AMPERE_PLUS)"}


# ---- pure: the plan, the manifest fields, the refusal rules ------------------------------------------------

@dataclass(frozen=True)
class TensorRTBuildPlan:
    onnx_path: Path  # the float32 graph (x_noisy -> labels)
    engine_path: Path  # model.engine
    network_onnx_path: Path  # the graph TensorRT parses: the cast graph, or the float32 one for fp32
    timing_cache_in: Path | None  # loaded if it exists
    timing_cache_out: Path  # timing.cache beside the engine
    precision: str
    input_name: str
    profile: dict  # {"input": name, "min": [B, C, H, W], "opt": [...], "max": [...]}
    workspace_bytes: int
    version_compatible: bool
    hardware_compatible: bool

    @property
    def needs_cast(self) -> bool:
        return self.precision != "fp32"

    def manifest_fields(self, *, tensorrt_version: str, gpu: str, compute_capability: str) -> dict:
        """What the engine directory's manifest records about the engine (top-level fields)."""
        return {
            "tensorrt": tensorrt_version,
            "gpu": gpu,
            "compute_capability": compute_capability,
            "precision": self.precision,
            "version_compatible": self.version_compatible,
            "hardware_compatible": self.hardware_compatible,
            "hardware_compatibility_level": "AMPERE_PLUS" if self.hardware_compatible else "NONE",
            "workspace_bytes": self.workspace_bytes,
            "profile": self.profile,
            "engine": self.engine_path.name,
            "timing_cache": self.timing_cache_out.name,
            "tensorrt_onnx": self.network_onnx_path.name,
        }


def plan_tensorrt_build(onnx_path, engine_path, *, precision: str = DEFAULT_PRECISION,
                        batch_sizes: tuple[int, int, int] = (1, 16, 64), input_shape: tuple[int, int, int],
                        input_name: str = INPUT_NAME, workspace_bytes: int = DEFAULT_WORKSPACE,
                        timing_cache_path=None, version_compatible: bool = False,
                        hardware_compatible: bool = False) -> TensorRTBuildPlan:
    """Validate the options (one CertsegError line each) and name every file and shape of the build."""
    if precision not in PRECISIONS:
        raise CertsegError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        lo, opt, hi = (int(b) for b in batch_sizes)
    except (TypeError, ValueError):
        raise CertsegError(f"--batch-sizes must be three integers MIN,OPT,MAX, got {batch_sizes!r}")
    if not 1 <= lo <= opt <= hi:
        raise CertsegError(f"--batch-sizes {lo},{opt},{hi} must satisfy 1 <= MIN <= OPT <= MAX")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise CertsegError(f"input shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    if int(workspace_bytes) < MIN_WORKSPACE:
        raise CertsegError(f"--workspace must be at least {MIN_WORKSPACE >> 20} MiB, got {int(workspace_bytes)} bytes")
    engine_path = Path(engine_path)
    onnx_path = Path(onnx_path)
    network_onnx = onnx_path if precision == "fp32" else engine_path.with_name(f"model.{precision}.onnx")
    if network_onnx == onnx_path and precision != "fp32":
        raise CertsegError(f"the cast graph would overwrite {onnx_path}; name the float32 graph otherwise")
    return TensorRTBuildPlan(
        onnx_path=onnx_path, engine_path=engine_path, network_onnx_path=network_onnx,
        timing_cache_in=Path(timing_cache_path) if timing_cache_path else None,
        timing_cache_out=engine_path.with_name(TIMING_CACHE_NAME), precision=precision, input_name=input_name,
        profile={"input": input_name, "min": [lo, *shape], "opt": [opt, *shape], "max": [hi, *shape]},
        workspace_bytes=int(workspace_bytes), version_compatible=bool(version_compatible),
        hardware_compatible=bool(hardware_compatible))


def check_build_target(plan: TensorRTBuildPlan, compute_capability: str, gpu: str = "this GPU") -> None:
    """Refuse options this GPU cannot build: bf16 and hardware compatibility need Ampere (8.0) or newer."""
    if _version(compute_capability)[:2] >= (8, 0):
        return
    wanted = [NEEDS_AMPERE[k] for k, on in (("bf16", plan.precision == "bf16"),
                                            ("hardware_compatible", plan.hardware_compatible)) if on]
    if wanted:
        raise CertsegError(f"{' and '.join(wanted)} need(s) an Ampere or newer GPU (compute capability >= 8.0) and "
                           f"{gpu} has {compute_capability}; build with --precision fp16 and without "
                           f"--hardware-compatible")


def check_agreement(agreement: float, *, precision: str, count: int, min_agreement: float = MIN_AGREEMENT,
                    force: bool = False, log=print) -> bool:
    """The engine must agree with ONNX Runtime fp32 on >= min_agreement of pixels, unless forced.

    Returns True when the build goes on only because it was forced (recorded in the manifest).
    """
    if agreement >= min_agreement:
        return False
    message = (f"the {precision} TensorRT engine agrees with ONNX Runtime fp32 on only {agreement:.2%} of the pixels "
               f"of {count} noisy phantoms (need {min_agreement:.0%})")
    if not force:
        raise CertsegError(f"{message}; build with --precision fp32, or pass --force to keep it")
    log(f"warning: {message}; kept because of --force (recorded in the manifest)")
    return True


# ---- environment -------------------------------------------------------------------------------------------

def check_tensorrt_environment():
    """(tensorrt module, GPU name, compute capability), or one CertsegError line naming what is missing.

    Cheap enough to call before anything is exported or staged, so a machine without TensorRT fails at once.
    """
    from ...runtime.backends.tensorrt import cudart, gpu_properties, import_tensorrt, require_device_kernels

    trt = import_tensorrt()
    require_device_kernels()
    cudart()
    gpu, cc = gpu_properties()
    return trt, gpu, cc


# ---- TensorRT calls ----------------------------------------------------------------------------------------

def _write_cast_graph(plan: TensorRTBuildPlan, log) -> dict:
    import onnx

    from ..onnx_files import save_onnx
    from ..precision import cast_precision, precision_summary

    cast = cast_precision(onnx.load(str(plan.onnx_path)), plan.precision)
    save_onnx(cast, plan.network_onnx_path)  # external data above 2 GB; TensorRT parses from the path
    summary = precision_summary(cast)
    log(f"cast graph {plan.network_onnx_path.name}: {summary['nodes_reduced']} nodes in {plan.precision}, "
        f"{summary['nodes_fp32']} kept in fp32, {summary['casts_inserted']} casts")
    return summary


def _parse(trt, builder, logger, path: Path, input_name: str):
    major = _version(trt.__version__)[0]
    flags = 0 if major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    native_norm = getattr(getattr(trt, "OnnxParserFlag", None), "NATIVE_INSTANCENORM", None)
    if native_norm is not None:  # TensorRT's own normalization layer, not the plugin (needed by VC/HC engines)
        parser.set_flag(native_norm)
    if not parser.parse_from_file(str(path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        first = errors[0] if errors else None
        desc = first.desc() if first is not None else (logger.errors[-1] if logger.errors else "unknown error")
        where = ""
        if first is not None:
            name = first.node_name() if hasattr(first, "node_name") else ""
            op = first.node_operator() if hasattr(first, "node_operator") else ""
            where = f" at node {name or first.node()}" + (f" ({op})" if op else "")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CertsegError(f"TensorRT {trt.__version__} cannot parse {path.name}{where}: "
                           f"{' '.join(str(desc).split())[:200]}{more}; build --backend onnxruntime or report "
                           f"the model")
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if input_name not in inputs:
        raise CertsegError(f"{path.name} has inputs {sorted(inputs)}, expected {input_name!r}")
    if inputs[input_name].dtype != trt.DataType.FLOAT:
        raise CertsegError(f"{path.name} input {input_name} is {inputs[input_name].dtype}, expected float32")
    return network, parser


def build_tensorrt_engine(onnx_path, out_path, *, precision: str = DEFAULT_PRECISION,
                          batch_sizes: tuple[int, int, int] = (1, 16, 64), input_shape: tuple[int, int, int],
                          input_name: str = INPUT_NAME, workspace_bytes: int = DEFAULT_WORKSPACE,
                          timing_cache_path=None, version_compatible: bool = False, hardware_compatible: bool = False,
                          log=print, trt=None) -> dict:
    """Build `out_path` (model.engine) from the float32 graph; returns the manifest fields (plan.manifest_fields)."""
    plan = plan_tensorrt_build(onnx_path, out_path, precision=precision, batch_sizes=batch_sizes,
                               input_shape=input_shape, input_name=input_name, workspace_bytes=workspace_bytes,
                               timing_cache_path=timing_cache_path, version_compatible=version_compatible,
                               hardware_compatible=hardware_compatible)
    from ...runtime.backends.tensorrt import capturing_logger, gpu_properties

    if trt is None:
        trt, gpu, cc = check_tensorrt_environment()
    else:
        gpu, cc = gpu_properties()
    check_build_target(plan, cc, gpu)
    cast_summary = _write_cast_graph(plan, log) if plan.needs_cast else None

    logger = capturing_logger(trt, echo=log)
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, plan.network_onnx_path, plan.input_name)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    profile = builder.create_optimization_profile()
    profile.set_shape(plan.input_name, plan.profile["min"], plan.profile["opt"], plan.profile["max"])
    config.add_optimization_profile(profile)
    if plan.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32, not TF32 tensor-core math
    if plan.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if plan.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    reused = _attach_timing_cache(config, plan.timing_cache_in, log)

    log(f"building TensorRT {trt.__version__} engine ({plan.precision}, batch {plan.profile['min'][0]}.."
        f"{plan.profile['max'][0]}) on {gpu} (compute capability {cc})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = logger.errors[-1].splitlines()[0][:200] if logger.errors else "no reason given"
        raise CertsegError(f"TensorRT could not build the engine: {detail}; try a larger --workspace or "
                           f"--precision fp32")
    plan.engine_path.write_bytes(memoryview(serialized))
    cache = config.get_timing_cache()
    if cache is not None:
        plan.timing_cache_out.write_bytes(memoryview(cache.serialize()))
    fields = plan.manifest_fields(tensorrt_version=trt.__version__, gpu=gpu, compute_capability=cc)
    fields["timing_cache_reused"] = reused
    if cast_summary is not None:
        fields["cast"] = cast_summary
    del parser, network  # the parser's weights must live until the build is done, no longer
    return fields


def _attach_timing_cache(config, path: Path | None, log) -> bool:
    """Load the timing cache at `path` into the config if it exists and this TensorRT accepts it."""
    blob = b""
    if path is not None and path.is_file():
        blob = path.read_bytes()
    cache = config.create_timing_cache(blob)
    if cache is None and blob:
        log(f"timing cache {path} is from another TensorRT or GPU; starting an empty one")
        cache, blob = config.create_timing_cache(b""), b""
    if cache is None or not config.set_timing_cache(cache, False):
        log("TensorRT did not accept a timing cache; building without one")
        return False
    return bool(blob)


def agreement_vs_onnxruntime(engine, onnx_fp32, inputs: np.ndarray, *, batch_size: int | None = None,
                             trt=None) -> float:
    """Fraction of pixels where the engine's labels equal ONNX Runtime's (CPU, float32) on `inputs`.

    engine: a path to model.engine, or a deserialized ``ICudaEngine``.  inputs: float32 (N, C, H, W),
    typically noisy phantoms (``onnx_export.parity_inputs``).
    """
    from ...runtime.backends.tensorrt import TensorRTBackend, capturing_logger, import_tensorrt

    trt = trt or import_tensorrt()
    keep = ()
    if not hasattr(engine, "num_io_tensors"):
        logger = capturing_logger(trt)
        runtime = trt.Runtime(logger)
        runtime.engine_host_code_allowed = True  # our own, just-built plan
        engine_bytes = Path(engine).read_bytes()
        engine = runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise CertsegError(f"TensorRT could not deserialize the engine it just built; {rebuild_hint()}")
        keep = (runtime, logger)
    inputs = np.ascontiguousarray(inputs, np.float32)
    lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(INPUT_NAME, 0))
    batch = min(max(batch_size or opt[0], lo[0]), hi[0])
    _, c, h, w = inputs.shape
    with TensorRTBackend(engine, trt=trt, keep_alive=keep, sigma=0.0, num_classes=1, channels=c, height=h, width=w,
                         batch_size=batch, cuda_graph=False) as backend:
        got = backend.infer(inputs)
    from ..parity import BatchPlan, onnx_runner

    # the reference in the engine's batch range and the default memory budget (export.parity), never all at once
    ref = BatchPlan.for_engine((lo[0], opt[0], hi[0])).run("onnxruntime fp32", onnx_runner(onnx_fp32), inputs)
    return float(np.mean(got == ref))


def build_tensorrt_stage(fused_onnx, stage, *, inputs: np.ndarray, input_shape: tuple[int, int, int],
                         precision: str = DEFAULT_PRECISION, batch_sizes: tuple[int, int, int] = (1, 16, 64),
                         workspace_bytes: int = DEFAULT_WORKSPACE, timing_cache_path=None,
                         version_compatible: bool = False, hardware_compatible: bool = False, force: bool = False,
                         min_agreement: float = MIN_AGREEMENT, log=print) -> dict:
    """Everything build_engine needs for --backend tensorrt inside its staging directory, in one call:
    engine + cast graph + timing cache written to `stage`, agreement with ONNX Runtime fp32 checked;
    returns the manifest fields."""
    stage = Path(stage)
    fields = build_tensorrt_engine(fused_onnx, stage / ENGINE_NAME, precision=precision, batch_sizes=batch_sizes,
                                   input_shape=input_shape, workspace_bytes=workspace_bytes,
                                   timing_cache_path=timing_cache_path, version_compatible=version_compatible,
                                   hardware_compatible=hardware_compatible, log=log)
    log(f"checking the engine against ONNX Runtime fp32 on {len(inputs)} noisy phantoms")
    agreement = agreement_vs_onnxruntime(stage / ENGINE_NAME, fused_onnx, inputs, batch_size=batch_sizes[1])
    forced = check_agreement(agreement, precision=precision, count=len(inputs), min_agreement=min_agreement,
                             force=force, log=log)
    fields["agreement_with_onnxruntime_fp32"] = {"label_agreement": agreement, "inputs": len(inputs),
                                                 "required": min_agreement, "forced": forced}
    return fields


def default_timing_cache(out) -> Path | None:
    """The timing cache of the engine directory being replaced, if any: rebuilds reuse its measurements."""
    path = Path(out) / TIMING_CACHE_NAME
    return path if path.is_file() and os.access(path, os.R_OK) else None


# ---- the builder registry's entry points --------------------------------------------------------------------

def check_request(precision: str, options: dict) -> None:
    """One line naming what is missing for TensorRT engines (the tensorrt package, a GPU, the CUDA kernels)."""
    if precision not in PRECISIONS:
        raise CertsegError(f"--precision {precision} is not available for tensorrt; choose one of {', '.join(PRECISIONS)}")
    check_tensorrt_environment()


def build(stage: Path, graphs, *, source, sigma, precision, batch_sizes, threads, parity, force, options, log) -> dict:
    """The fp32 ONNX graphs (checked against torch), then the engine built from the fused one and checked against
    ONNX Runtime fp32 on the same noisy phantoms."""
    from ..onnx_export import check_graphs, parity_inputs
    from .onnxruntime import optimise_graphs

    if getattr(graphs, "fixed_batch", None) not in (None, 1):
        # The device loop runs a call's last, partial batch at its own size, which a fixed-batch engine refuses.
        raise CertsegError(f"the segmenter graph has a fixed batch of {graphs.fixed_batch}, which --backend tensorrt "
                           f"cannot run yet; export the segmenter with a dynamic batch dimension (or batch 1)")
    settings = optimise_graphs(graphs, threads, log)  # the ONNX graphs beside the engine run on ONNX Runtime
    report = {"skipped": True}
    if parity:
        log("checking parity with torch on noisy phantoms")
        report = check_graphs(source, sigma, graphs, min_agreement=0.0 if force else 0.999, batch_sizes=batch_sizes,
                              memory_budget=(options or {}).get("memory_budget"))
    opts = dict(options or {})
    opts.setdefault("timing_cache_path", default_timing_cache(options.get("out")) if options.get("out") else None)
    opts.pop("out", None)
    opts.pop("memory_budget", None)
    meta = graphs.metadata["input"]
    fields = build_tensorrt_stage(graphs.fused, stage, inputs=parity_inputs(source, sigma, 16), precision=precision,
                                  input_shape=(meta["channels"], meta["height"], meta["width"]),
                                  batch_sizes=batch_sizes, force=force, log=log, **opts)
    import onnxruntime

    return {"graphs": {"fused": graphs.fused.name, "segmenter": graphs.segmenter.name}, "onnxruntime": settings,
            "parity": report, **fields, "tools": {"onnxruntime": onnxruntime.__version__}}
