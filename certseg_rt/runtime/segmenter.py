"""CertifiedSegmenter: an engine directory loaded for certification.  No torch, no diffusers."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import __version__
from ..certify import DEFAULTS, Certificate, Prediction, certify, check_parameters, predict
from ..errors import CertsegError
from ..manifest import MANIFEST_NAME, REBUILD, load_manifest, sha256_file


def _check_tool_versions(manifest: dict) -> None:
    import onnxruntime

    built = manifest["tools"].get("onnxruntime")
    here = onnxruntime.__version__
    if built is None or built.split(".")[:2] != here.split(".")[:2]:
        raise CertsegError(f"engine field tools.onnxruntime is {built}, but this is onnxruntime {here}; install "
                           f"onnxruntime=={built} or {REBUILD.replace('rebuild it', 'rebuild the engine')}")


def _check_graph_matches(session, manifest: dict, name: str) -> None:
    """The fused graph is what the manifest says: labels out, its input shape, and (where the graph
    records them) its sigma and classes.  A manifest edited by hand, or copied from another engine, fails here."""
    import json

    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    want = manifest["input"]
    shape = [want["channels"], want["height"], want["width"]]
    if out.type != "tensor(uint8)" or any(isinstance(d, int) and d != w for d, w in zip(inp.shape[1:], shape)):
        raise CertsegError(f"engine graph {name} takes {inp.shape} and gives {out.type}, but the manifest (field "
                           f"input) describes labels (uint8) of a {shape} image; {REBUILD}")
    meta = session.get_modelmeta().custom_metadata_map
    try:
        if "sigma" in meta and not np.isclose(float(meta["sigma"]), manifest["sigma"], rtol=0, atol=1e-9):
            raise CertsegError(f"engine field sigma is {manifest['sigma']} but {name} was built for sigma "
                               f"{meta['sigma']}; {REBUILD}")
        if "classes" in meta and json.loads(meta["classes"]) != manifest["classes"]:
            raise CertsegError(f"engine field classes lists {len(manifest['classes'])} classes, but {name} was "
                               f"built for {meta['classes']}; {REBUILD}")
    except (ValueError, TypeError):
        raise CertsegError(f"engine graph {name} has unreadable metadata (sigma, classes); {REBUILD}")


class CertifiedSegmenter:
    """Certify images with a built engine directory.

    >>> seg = CertifiedSegmenter.load("engines/chest")
    >>> cert = seg.certify(image)          # image: float32 (C, H, W) in [0, 1]
    >>> cert.labels, cert.radius           # uint8 mask (255 = abstain), L2 radius
    """

    def __init__(self, engine_dir: Path, manifest: dict, backend, segment_session=None):
        self.engine_dir = Path(engine_dir)
        self.manifest = manifest
        self.backend = backend
        self._segment_session = segment_session
        backend.record = {
            **getattr(backend, "record", {}),
            "backend": f"{manifest['backend']}:{getattr(backend, 'provider', 'cpu')}",
            "precision": manifest["precision"],
            "modality": manifest.get("modality"),
            "denoiser": manifest.get("denoiser"),
            "engine_dir": str(self.engine_dir),
            "manifest_sha256": sha256_file(self.engine_dir / MANIFEST_NAME),
            "model_files": manifest["files"],
            "source_model_files": manifest.get("source_model_files", {}),
            "certseg_rt": __version__,
        }

    @classmethod
    def load(cls, engine_dir, *, provider: str = "cpu", batch_size: int | None = None,
             threads: int | None = None) -> "CertifiedSegmenter":
        """Check the manifest (hashes before any model file is parsed, tool versions), then open the engine."""
        manifest = load_manifest(engine_dir)
        if manifest["backend"] == "tensorrt":
            from .backends.tensorrt import open_tensorrt_backend

            return cls(engine_dir, manifest, open_tensorrt_backend(engine_dir, manifest, batch_size=batch_size))
        if manifest["backend"] != "onnxruntime":
            raise CertsegError(f"engine field backend is {manifest['backend']!r}, which this runtime cannot run yet; "
                               f"{REBUILD} --backend onnxruntime")
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise CertsegError("ONNX Runtime is not installed; pip install 'certseg-rt[cpu]'")
        _check_tool_versions(manifest)
        from .backends.onnxruntime import OnnxRuntimeBackend, make_session

        engine_dir = Path(engine_dir)
        inp = manifest["input"]
        batch = batch_size or manifest["batch_sizes"]["opt"]
        if not manifest["batch_sizes"]["min"] <= batch <= manifest["batch_sizes"]["max"]:
            raise CertsegError(f"batch size {batch} is outside the engine's range "
                               f"{manifest['batch_sizes']['min']}..{manifest['batch_sizes']['max']}")
        graphs = manifest.get("graphs") or {}
        if not graphs.get("fused") or not graphs.get("segmenter"):
            raise CertsegError(f"engine field graphs must name the fused and the segmenter graph; {REBUILD}")
        session = make_session(engine_dir / graphs["fused"], provider, threads)
        _check_graph_matches(session, manifest, graphs["fused"])
        backend = OnnxRuntimeBackend(session, sigma=manifest["sigma"], num_classes=len(manifest["classes"]),
                                     channels=inp["channels"], height=inp["height"], width=inp["width"],
                                     batch_size=batch, provider=provider)
        return cls(engine_dir, manifest, backend)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def sigma(self) -> float:
        return float(self.manifest["sigma"])

    @property
    def channels(self) -> int:
        return int(self.manifest["input"]["channels"])

    def _check_sigma(self, sigma):
        if sigma is not None and not np.isclose(sigma, self.sigma, rtol=0, atol=1e-12):
            raise CertsegError(f"--sigma {sigma} differs from the engine's sigma {self.sigma} (manifest field sigma; "
                               f"the denoiser's timestep depends on it); rebuild with "
                               f"`certseg-rt build-engine --sigma {sigma}` or omit --sigma")

    def certify(self, image: np.ndarray, *, n0: int = DEFAULTS["n0"], n: int = DEFAULTS["n"],
                tau: float = DEFAULTS["tau"], alpha: float = DEFAULTS["alpha"], seed: int = DEFAULTS["seed"],
                correction: str = DEFAULTS["correction"], sigma: float | None = None) -> Certificate:
        check_parameters(sigma=sigma, tau=tau, alpha=alpha, n0=n0, n=n, correction=correction, seed=seed)
        self._check_sigma(sigma)
        return certify(self.backend, image, n0=n0, n=n, tau=tau, alpha=alpha, seed=seed, correction=correction)

    def predict(self, image: np.ndarray, *, n: int = DEFAULTS["n"], alpha: float = DEFAULTS["alpha"],
                seed: int = DEFAULTS["seed"], correction: str = DEFAULTS["correction"],
                sigma: float | None = None) -> Prediction:
        self._check_sigma(sigma)
        return predict(self.backend, image, n=n, alpha=alpha, seed=seed, correction=correction)

    def segment(self, image: np.ndarray) -> np.ndarray:
        """The base segmenter alone on a clean image (no noise, no denoiser): uint8 (H, W)."""
        from .backends.onnxruntime import make_session
        from .sampling import check_input

        if self._segment_session is None:
            self._segment_session = make_session(self.engine_dir / self.manifest["graphs"]["segmenter"])
        x = check_input(image, self.channels)
        logits = self._segment_session.run(None, {self._segment_session.get_inputs()[0].name: x[None]})[0]
        return np.argmax(logits[0], axis=0).astype(np.uint8)
