"""Bundled default models, trained by ``python -m certseg_rt.zoo.train`` on phantoms the repo generates.

A model directory holds ``segmenter.json`` (factory, kwargs, classes, input), ``segmenter.safetensors``
and, when the model has one, a diffusers ``denoiser/`` (``unet/`` + ``scheduler/``, save_pretrained layout).
"""
from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "chest"


def bundled_models() -> dict[str, dict]:
    """Name -> modality, channels, classes and whether it has a denoiser, read from each segmenter.json."""
    import json

    out = {}
    for path in sorted(ZOO_DIR.iterdir()):
        if (path / "segmenter.json").is_file():
            config = json.loads((path / "segmenter.json").read_text())
            out[path.name] = {"modality": config.get("modality"), "channels": config["input"]["channels"],
                              "classes": config["classes"], "denoiser": (path / "denoiser").is_dir()}
    return out


def bundled_model_dir(name: str = DEFAULT_MODEL) -> Path:
    path = ZOO_DIR / name
    if not (path / "segmenter.json").is_file():
        available = sorted(p.name for p in ZOO_DIR.iterdir() if (p / "segmenter.json").is_file())
        raise FileNotFoundError(f"no bundled model {name!r}; available: {', '.join(available) or 'none'}")
    return path
