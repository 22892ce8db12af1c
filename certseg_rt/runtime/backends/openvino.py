"""OpenVINO backend (CPU): the fused graph's IR compiled once per static batch size, fed zero-copy.

The engine directory (``export/builders/openvino.py``) holds ``model.xml``/``model.bin`` (x_noisy float32
(B, C, H, W) in [0, 1] -> labels uint8 (B, H, W)) and ``segmenter.xml``/``.bin`` (x -> logits, for the clean
Dice).  This runner

* refuses an engine built by another OpenVINO release (the part of ``openvino.get_version()`` before '-'),
  and a bf16 engine on a CPU whose plugin does not report native BF16 (``OPTIMIZATION_CAPABILITIES``): it
  would run as another base model than the one certified;
* compiles with ``INFERENCE_PRECISION_HINT`` set from the manifest, always: on CPUs with AMX the CPU
  plugin's default is bf16, so an fp32 engine compiled without the hint would silently run bf16.  The hint
  is read back from the compiled model and must be what the manifest says;
* reshapes the model to a static batch (a dynamic batch runs ~1.5x slower here), latency settings
  (``PERFORMANCE_HINT`` LATENCY, one stream, threads from the manifest or ``threads``).  bf16 and int8 give
  a sample other labels at batch 1 than at batch 16 (other kernels; ~1e-4 of the pixels), so every sample
  of a call runs at one batch size (``GraphBackend.static_batch``: 10 for n0 = 10, 15 for n = 100 at batch
  16, the last batch padded).  The sizes of the calls the user will make (``calls``; default a default
  certify's n0 and n) are compiled when the engine is opened, not inside the first certify; any other size
  on first use; the two last used are kept;
* keeps what it compiled in the per-user compiled-model cache (``runtime/model_cache.py``: exported with
  ``CompiledModel.export_model``, keyed by the IR's SHA-256 from the manifest, the static shape, every
  compile property, the OpenVINO build and the CPU; checked by length and SHA-256 before
  ``Core.import_model``), so the next process imports instead of compiling;
* feeds each infer request ``ov.Tensor``s over the sampling loop's own noisy buffer and label buffer
  (``shared_memory=True``): no copy per batch.

Imports ``openvino`` only (``pip install 'certseg-rt[openvino]'``): no torch, no ONNX Runtime.

OpenVINO documentation used: ``Core.read_model(xml, bin)``, ``Model.clone``, ``Model.reshape``,
``Core.compile_model(model, "CPU", properties)``, ``CompiledModel.export_model``, ``Core.import_model``
(bytes or an ``ov.Tensor``, with the compile properties), ``CompiledModel.get_property`` (a compiled model reports
the properties it was compiled with), ``Core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")``,
``ov.Tensor(array, shared_memory=True)``, ``InferRequest.set_input_tensor`` / ``set_output_tensor`` /
``infer``, ``Model.get_rt_info`` (2026.4).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from ...certify import DEFAULTS
from ...errors import CertsegError
from ..memory import MemoryCosts
from ..sampling import GraphBackend, check_engine_size, check_input

INFERENCE_PRECISIONS = ("f32", "bf16")  # values of the manifest's openvino.inference_precision
# Manifest field openvino.batching: how this runner and the native one (cpp_ext/runtime/engine.cpp) batch samples,
# every sample of a call at one static batch size (GraphBackend.static_batch).  Reduced precision picks kernels per
# shape, so the batching is part of the base model that is certified: both runtimes refuse an engine recording
# another.
BATCHING = "static-per-call"
# Measured by benchmarks/memory_budget.py (peak RSS of certify at 512x512: 296 MB at batch 1; 1181 MB at batch 8
# with models for 2 and 1 compiled too, 88 MB per compiled sample against 105 MB of torch's live tensors):
# OpenVINO's CPU plugin fuses and reuses buffers.  The 2 counts the two compiled batch sizes kept (each at
# most the batch).
MEMORY = MemoryCosts(base_bytes=150 << 20, activation_factor=2 * 0.85)


def rebuild_hint(precision: str = "fp32") -> str:
    return f"rebuild it here with `certseg-rt build-engine --backend openvino --precision {precision} --out DIR`"


@contextlib.contextmanager
def _telemetry_declined():
    """OpenVINO's and NNCF's usage telemetry (the openvino_telemetry package) starts when they are imported: without
    a consent file it writes a client id and usage counts under ~/intel and sends events to Google Analytics.
    certseg-rt writes nothing outside its cache and the engine folders and sends nothing from a scanner's machine, so
    they are imported as both packages decline telemetry in CI jobs (CI=true; NNCF_CI), the variables restored after.
    The telemetry object is one per process, so the declined consent holds for the process."""
    saved = {k: os.environ.get(k) for k in ("CI", "NNCF_CI")}
    os.environ.update(CI="true", NNCF_CI="1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def import_openvino():
    """The openvino module, its telemetry declined (every import of OpenVINO in certseg-rt goes through here; once
    imported, the module itself: the inference loop asks for it per batch)."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    try:
        with _telemetry_declined():
            import openvino
    except ImportError:
        raise CertsegError("OpenVINO is not installed; pip install 'certseg-rt[openvino]'")
    return openvino


def import_nncf():
    """The nncf module (int8 builds), imported after OpenVINO with telemetry declined; ImportError if absent."""
    import_openvino()
    with _telemetry_declined():
        import nncf
    return nncf


def release(version: str) -> str:
    """'2026.4.1-22982-e213a147257-releases/2026/4' -> '2026.4.1'."""
    return str(version).split("-")[0]


def cpu_capabilities(core) -> list[str]:
    """What the CPU plugin says this CPU runs natively (tests stand in for it to simulate other CPUs)."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def require_native_bf16(core, what: str) -> None:
    caps = cpu_capabilities(core)
    if "BF16" not in caps:
        raise CertsegError(f"{what}: this CPU has no native bf16 (OpenVINO's CPU plugin reports "
                           f"{', '.join(caps) or 'nothing'}), so bf16 would be emulated as another base model than "
                           f"the one certified; build --backend openvino --precision fp32 or int8 for this CPU")


def compile_properties(inference_precision: str, threads: int) -> dict:
    return {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1}


# The compile's inputs besides the graph and its shape, in the order of the cache key (cpp_ext/runtime writes the same).
KEY_PROPERTIES = ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS")


def cache_key(core, graph: str, shape: list[int], properties: dict) -> str:
    """What a compiled model depends on: the OpenVINO build, the CPU, the IR (SHA-256 of .xml and .bin, as the
    manifest records them), the static input shape and the compile properties."""
    from ..model_cache import key_text

    return key_text([("backend", "openvino"), ("openvino", import_openvino().get_version()),
                     ("device", core.get_property("CPU", "FULL_DEVICE_NAME")), ("graph", graph),
                     ("input", "x".join(map(str, shape)))] + [(k, properties[k]) for k in KEY_PROPERTIES])


def compile_static(core, model, batch: int, properties: dict, cache=None, graph: str | None = None):
    """``model`` compiled for a static batch, its precision hint read back and checked.  With a ``cache``
    (``model_cache.ModelCache``) and the IR's digests (``graph``), an entry for exactly this compile is imported
    instead, and a fresh compile is stored; an entry OpenVINO refuses (another build, another CPU) is
    recompiled and overwritten."""
    dims = model.input(0).get_partial_shape()
    shape = [batch, *(dims[i].get_length() for i in range(1, dims.rank.get_length()))]
    key = cache_key(core, graph, shape, properties) if cache is not None and graph else None
    compiled = None
    if key is not None:
        payload = cache.read(key)
        if payload is not None:
            ov = import_openvino()
            try:
                compiled = core.import_model(ov.Tensor(payload), "CPU", properties)
                if list(compiled.input(0).get_shape()) != shape:
                    raise RuntimeError("another shape")
            except RuntimeError:  # OpenVINO's own header check (release, CPU) failed: compile it again
                cache.refused()
                compiled = None
    if compiled is None:
        static = model.clone()
        static.reshape(shape)
        compiled = core.compile_model(static, "CPU", properties)
        if key is not None:
            import io

            stream = io.BytesIO()
            compiled.export_model(stream)
            cache.write(key, stream.getbuffer())
    got = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if got != properties["INFERENCE_PRECISION_HINT"]:
        raise CertsegError(f"OpenVINO compiled the engine at precision {got}, not the "
                           f"{properties['INFERENCE_PRECISION_HINT']} its manifest records (field openvino.inference_precision); {rebuild_hint()}")
    return compiled


def read_model(core, xml: Path):
    try:
        return core.read_model(str(xml), str(xml.with_suffix(".bin")))
    except RuntimeError as e:
        first = next((line for line in str(e).splitlines() if line.strip() and "Exception from" not in line), "")
        raise CertsegError(f"OpenVINO cannot read {xml.name} ({first.strip()[:160]}); the file is corrupt or was "
                           f"built for another version: {rebuild_hint()}")


class OpenVinoBackend(GraphBackend):
    name = "openvino"
    static_batch = True
    KEEP = 2  # compiled batch sizes kept (a certify uses two: n0's and n's)

    def __init__(self, core, model, properties: dict, *, sigma, num_classes, channels, height, width, batch_size,
                 cache=None, graph: str | None = None):
        super().__init__(sigma=sigma, num_classes=num_classes, channels=channels, size_multiple=1,
                         batch_size=batch_size)
        self.core, self.model, self.properties = core, model, properties
        self.cache, self.graph = cache, graph  # the compiled-model cache (or None) and the IR's digests
        self.height, self.width = int(height), int(width)
        self.input_size = (self.height, self.width)
        self._labels = np.empty((batch_size, height, width), np.uint8)
        self._requests: dict[int, object] = {}  # batch -> infer request of the model compiled for it
        self._bound: dict[int, int] = {}  # batch -> address of the input buffer its request reads

    def prepare(self, calls) -> None:
        """Compile (or import from the cache) the static batch of each call of ``calls`` samples now, so that
        the certify that makes them compiles nothing; a model that cannot compile fails here."""
        if not calls or any(isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1
                            for num in calls):
            raise CertsegError(f"calls={calls!r}: give the sample counts of the certify calls to prepare for, "
                               f"integers >= 1 (e.g. (n0, n))")
        sizes = [self.batch_size if self.fixed_batch else self.call_batch(num) for num in calls]
        for size in list(dict.fromkeys(sizes))[-self.KEEP:]:
            self._request(size)

    @property
    def compiled(self):
        """The compiled model used last (after loading: the one for the full batch)."""
        return next(reversed(self._requests.values()))[1]

    def _request(self, batch: int):
        if batch not in self._requests:
            while len(self._requests) >= self.KEEP:  # the least recently used goes (dicts keep insertion order)
                self._bound.pop(next(iter(self._requests)), None)
                del self._requests[next(iter(self._requests))]
            compiled = compile_static(self.core, self.model, batch, self.properties, self.cache, self.graph)
            self._requests[batch] = (compiled.create_infer_request(), compiled)
        else:
            self._requests[batch] = self._requests.pop(batch)
        return self._requests[batch]

    def _run(self, x: np.ndarray, labels: np.ndarray) -> None:
        ov = import_openvino()

        request = self._request(x.shape[0])[0]
        if self._bound.get(x.shape[0]) != x.ctypes.data:  # bound once per buffer: the loop refills it
            request.set_input_tensor(ov.Tensor(x, shared_memory=True))
            request.set_output_tensor(ov.Tensor(labels, shared_memory=True))
            self._bound[x.shape[0]] = x.ctypes.data
        request.infer()

    def infer(self, x_noisy: np.ndarray) -> np.ndarray:
        """One static batch of x_noisy.shape[0] samples (compiled for that size on first use)."""
        b = x_noisy.shape[0]
        if b > self.batch_size:
            raise ValueError(f"a batch of {b} exceeds the backend's batch size {self.batch_size}")
        self._run(x_noisy, self._labels[:b])
        return self._labels[:b]

    def check_image(self, x):
        check_engine_size(x, self.height, self.width, "--backend openvino ")
        return super().check_image(x)


class OpenVinoSegmenter:
    """The base segmenter alone (segmenter.xml) on clean images, for the clean Dice: uint8 (H, W) labels.
    Compiled on first use, at the engine's inference precision: certifying never needs it.  A graph with a
    fixed batch (``batch`` > 1) runs the image repeated to that batch."""

    def __init__(self, core, xml: Path, channels: int, properties: dict, batch: int = 1, cache=None,
                 graph: str | None = None):
        self.core, self.xml, self.channels, self.properties, self.batch = core, xml, channels, properties, batch
        self.cache, self.graph = cache, graph
        self._request = None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = check_input(image, self.channels)
        if self._request is None:
            self._request = compile_static(self.core, read_model(self.core, self.xml), self.batch,
                                           self.properties, self.cache, self.graph).create_infer_request()
        logits = self._request.infer({0: np.repeat(x[None], self.batch, axis=0)})[0]
        return np.argmax(logits[0], axis=0).astype(np.uint8)


def check_engine(manifest: dict, openvino, core) -> dict:
    """The manifest's openvino fields, checked against this OpenVINO and this CPU."""
    settings = manifest.get("openvino")
    precision = manifest["precision"]
    if not isinstance(settings, dict) or settings.get("inference_precision") not in INFERENCE_PRECISIONS:
        raise CertsegError(f"engine field openvino.inference_precision must be one of "
                           f"{', '.join(INFERENCE_PRECISIONS)}; {rebuild_hint(precision)}")
    built = manifest["tools"].get("openvino") or settings.get("version")
    here = openvino.get_version()
    if built is None or release(built) != release(here):
        raise CertsegError(f"engine field tools.openvino is {built} (release {release(built) if built else '-'}), but "
                           f"this is OpenVINO {release(here)}; install openvino=={release(built) if built else '...'} "
                           f"or {rebuild_hint(precision)}")
    if precision not in ("fp32", "bf16", "int8"):
        raise CertsegError(f"engine field precision is {precision!r}; an OpenVINO engine is fp32, bf16 or int8; "
                           f"{rebuild_hint()}")
    if settings["inference_precision"] == "bf16" or precision == "bf16":
        require_native_bf16(core, f"engine {precision} (field openvino.inference_precision "
                                  f"{settings['inference_precision']})")
    if settings.get("batching") != BATCHING:
        raise CertsegError(f"engine field openvino.batching is {settings.get('batching')!r}; this runtime batches "
                           f"{BATCHING!r} (the batching is part of the certified base model); "
                           f"{rebuild_hint(precision)}")
    threads = settings.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise CertsegError(f"engine field openvino.threads is {threads!r}; it must be an integer >= 1; "
                           f"{rebuild_hint(precision)}")
    return settings


def check_graph_matches(model, manifest: dict, name: str) -> None:
    """The fused IR is what the manifest says: its input shape, labels out, and the sigma and classes it was
    built for (rt_info certseg_rt.*).  A manifest edited by hand, or copied from another engine, fails here."""
    from ...manifest import REBUILD

    want = manifest["input"]
    shape = model.input(0).get_partial_shape()
    dims = [shape[i].get_length() if shape[i].is_static else None for i in range(shape.rank.get_length())]
    if len(model.inputs) != 1 or len(model.outputs) != 1 or len(dims) != 4 or \
            dims[1:] != [want["channels"], want["height"], want["width"]] or \
            model.output(0).get_element_type().get_type_name() != "u8":
        image = [want["channels"], want["height"], want["width"]]
        raise CertsegError(f"engine graph {name} takes {dims} and gives {model.output(0).get_element_type()}, but the "
                           f"manifest (field input) describes labels (uint8) of a {image} image; {REBUILD}")
    try:
        sigma = float(model.get_rt_info(["certseg_rt", "sigma"]).astype(str))
        classes = json.loads(model.get_rt_info(["certseg_rt", "classes"]).astype(str))
    except (RuntimeError, ValueError, TypeError):
        raise CertsegError(f"engine graph {name} does not record the sigma and classes it was built for "
                           f"(rt_info certseg_rt); {REBUILD}")
    if not np.isclose(sigma, manifest["sigma"], rtol=0, atol=1e-9):
        raise CertsegError(f"engine field sigma is {manifest['sigma']} but {name} was built for sigma {sigma}; "
                           f"{REBUILD}")
    if classes != manifest["classes"]:
        raise CertsegError(f"engine field classes lists {len(manifest['classes'])} classes, but {name} was built for "
                           f"{classes}; {REBUILD}")


def graph_digests(manifest: dict, xml: Path) -> str | None:
    """'<sha256 of the .xml> <sha256 of the .bin>' as the manifest records them (checked at load)."""
    files = manifest["files"]
    names = (xml.name, xml.with_suffix(".bin").name)
    return " ".join(files[n] for n in names) if all(n in files for n in names) else None


def open_engine(engine_dir, manifest: dict, *, batch_size=None, threads=None, provider: str = "cpu",
                max_memory=None, cache_dir=None, calls=None) -> OpenVinoBackend:
    """An openvino engine directory (manifest already checked) -> OpenVinoBackend, with the static batches of
    ``calls`` (sample counts; default a default certify's n0 and n) compiled, or imported from the cache
    (``cache_dir``: a folder, None for the default, False for none)."""
    from ...adapters import image_channels
    from ..model_cache import ModelCache, cache_root
    from . import engine_batch_size
    from .onnxruntime import graph_paths

    if provider not in (None, "cpu"):
        raise CertsegError(f"the OpenVINO backend runs on the CPU; --provider {provider} applies to onnxruntime "
                           f"engines")
    openvino = import_openvino()
    core = openvino.Core()
    settings = check_engine(manifest, openvino, core)
    if threads is not None and threads < 1:
        raise CertsegError(f"--threads {threads} must be >= 1")
    batch = engine_batch_size(manifest, batch_size, max_memory=max_memory, costs=MEMORY)
    fused, segmenter = graph_paths(Path(engine_dir), manifest)
    model = read_model(core, fused)
    check_graph_matches(model, manifest, fused.name)
    properties = compile_properties(settings["inference_precision"], threads or settings.get("threads") or 0)
    root = cache_root(cache_dir)
    cache = None if root is None else ModelCache(root, "openvino")
    inp = manifest["input"]
    backend = OpenVinoBackend(core, model, properties, sigma=manifest["sigma"], num_classes=len(manifest["classes"]),
                              channels=inp["channels"], height=inp["height"], width=inp["width"], batch_size=batch,
                              cache=cache, graph=graph_digests(manifest, fused))
    # A graph with a fixed batch runs only that batch: the sampling loop pads its last batch up to it.
    backend.fixed_batch = bool(manifest["batch_sizes"].get("fixed"))
    backend.prepare(calls or (DEFAULTS["n0"], DEFAULTS["n"]))
    # The clean segmenter takes the image as given (before an adapter replicates it for the denoiser).
    backend.segment = OpenVinoSegmenter(core, segmenter, image_channels(manifest), properties,
                                        batch=batch if backend.fixed_batch else 1, cache=cache,
                                        graph=graph_digests(manifest, segmenter))
    compiled = backend.compiled  # what the plugin compiled, read back (the native runtime records the same)
    backend.record.update({"openvino": openvino.get_version(), "batch_size": batch,
                           "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                           "threads": int(compiled.get_property("INFERENCE_NUM_THREADS"))})
    return backend
