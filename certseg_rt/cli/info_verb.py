"""info: version, backends, the compiled extension, bundled models."""
from __future__ import annotations

import json

import click

from .. import __version__
from .group import main


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(as_json):
    """Version, available backends, the compiled extension, the compiled-model cache and the bundled models."""
    import importlib.util

    backends = {"torch-eager": importlib.util.find_spec("torch") is not None}
    try:
        import onnxruntime

        available = onnxruntime.get_available_providers()
        for short, provider in (("cpu", "CPU"), ("cuda", "CUDA"), ("tensorrt", "Tensorrt")):
            backends[f"onnxruntime:{short}"] = f"{provider}ExecutionProvider" in available
    except ImportError:
        backends["onnxruntime:cpu"] = False
    backends["openvino"] = importlib.util.find_spec("openvino") is not None
    backends["tensorrt"] = importlib.util.find_spec("tensorrt") is not None
    from .._ext_loader import EXTENSION_STATUS
    from ..zoo import bundled_models

    from ..runtime.model_cache import cache_root

    root = cache_root()
    entries = sorted((root / "openvino").glob("*.blob")) if (root / "openvino").is_dir() else []
    cache = {"folder": str(root), "openvino_entries": len(entries),
             "openvino_bytes": sum(p.stat().st_size for p in entries)}
    data = {"version": __version__, "backends": backends, "extension": EXTENSION_STATUS, "models": bundled_models(),
            "compiled_model_cache": cache}
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(f"certseg-rt {__version__}")
        for name, ok in backends.items():
            click.echo(f"  {name:<22} {'yes' if ok else 'no'}")
        click.echo(f"  extension: cpu {'yes' if EXTENSION_STATUS['cpu'] else 'no'}, "
                   f"cuda {'yes' if EXTENSION_STATUS['cuda'] else 'no'}")
        click.echo(f"compiled-model cache: {cache['folder']} ({cache['openvino_entries']} OpenVINO entries, "
                   f"{cache['openvino_bytes'] / 2**20:.1f} MiB; $CERTSEG_CACHE_DIR moves it, removing it is safe)")
        click.echo("bundled models (--model NAME):")
        for name, m in data["models"].items():
            click.echo(f"  {name:<18} {m['modality'] or '-':<13} {m['channels']} ch, {len(m['classes'])} classes, "
                       f"{'denoiser + segmenter' if m['denoiser'] else 'segmenter only (plain smoothing)'}")
