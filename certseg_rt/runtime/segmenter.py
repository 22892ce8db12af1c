"""CertifiedSegmenter: an engine directory loaded for certification.  No torch, no diffusers.

It knows no backend: the manifest names one, and the runner registry (``runtime.backends``) opens it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import __version__
from ..adapters import adapter_from_manifest, image_channels, with_adapter
from ..certify import (
    DEFAULTS,
    Certificate,
    Prediction,
    certify,
    check_parameters,
    predict,
)
from ..errors import CertsegError
from ..manifest import MANIFEST_NAME, load_manifest, sha256_file
from . import backends


class CertifiedSegmenter:
    """Certify images with a built engine directory.

    >>> seg = CertifiedSegmenter.load("engines/chest")
    >>> cert = seg.certify(image)          # image: float32 (C, H, W) in [0, 1]
    >>> cert.labels, cert.radius           # uint8 mask (255 = abstain), L2 radius
    """

    def __init__(self, engine_dir: Path, manifest: dict, backend):
        self.engine_dir = Path(engine_dir)
        self.manifest = manifest
        self.backend = backend
        backend.record = {
            **getattr(backend, "record", {}),
            "backend": f"{manifest['backend']}:{getattr(backend, 'provider', 'cpu')}",
            "precision": manifest["precision"],
            "batch_size": getattr(backend, "batch_size", None),
            "modality": manifest.get("modality"),
            "denoiser": manifest.get("denoiser"),
            "adapter": manifest.get("adapter"),
            "engine_dir": str(self.engine_dir),
            "manifest_sha256": sha256_file(self.engine_dir / MANIFEST_NAME),
            "model_files": manifest["files"],
            "source_model_files": manifest.get("source_model_files", {}),
            "certseg_rt": __version__,
        }

    @classmethod
    def load(cls, engine_dir, *, provider: str = "cpu", batch_size: int | None = None,
             threads: int | None = None, max_memory: int | str | None = None, cache_dir=None,
             calls: tuple[int, ...] | None = None) -> "CertifiedSegmenter":
        """Check the manifest (hashes before any model file is parsed), then let the backend's runner open it.

        A runner that compiles per batch shape (OpenVINO) compiles, at load, what calls of ``calls`` samples
        run (default: a default certify's n0 and n), or imports it from the per-user compiled-model cache
        (``cache_dir``: a folder; None: $CERTSEG_CACHE_DIR or the platform's cache folder; False: no cache;
        see ``runtime/model_cache.py``), so that the first certify is as fast as the next ones.

        ``batch_size`` (default: the engine's optimum) is lowered to the largest batch of the engine's range
        whose estimated peak memory fits ``max_memory`` (bytes, or e.g. "2G"; default: half the memory
        available now).  With an adapter (manifest field adapter: a gray image in front of an RGB denoiser)
        the backend takes the image as given and replicates it before the noise (``adapters.ReplicatedInput``)."""
        import threading

        from ..stats import load_tail_functions
        from .memory import parse_memory

        manifest = load_manifest(engine_dir)
        budget = None if max_memory is None else parse_memory(max_memory)
        # The statistics' scipy import (~0.3 s) overlaps the engine's compile or cache import (native code, the
        # GIL released), instead of falling into the first certify.
        statistics = threading.Thread(target=load_tail_functions, daemon=True)
        statistics.start()
        try:
            backend = backends.open_engine(Path(engine_dir), manifest, batch_size=batch_size, threads=threads,
                                           provider=provider, max_memory=budget, cache_dir=cache_dir, calls=calls)
        finally:
            statistics.join()
        return cls(engine_dir, manifest, with_adapter(backend, adapter_from_manifest(manifest)))

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def sigma(self) -> float:
        return float(self.manifest["sigma"])

    @property
    def channels(self) -> int:
        """The channels of the images it takes (with an adapter, fewer than the noise space's input.channels)."""
        return image_channels(self.manifest)

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
        return self.backend.segment(image)
