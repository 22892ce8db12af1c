"""Denoiser intake: a diffusers directory (UNet2DModel + DDPMScheduler) -> the pieces one-step denoising needs."""
from __future__ import annotations

from pathlib import Path

from ..errors import CertsegError


def load_denoiser(path: Path):
    """A diffusers directory with unet/ (UNet2DModel) and scheduler/ (DDPMScheduler) -> (unet, scheduler, files)."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(path)
    for sub in ("unet", "scheduler"):
        if not (path / sub).is_dir():
            raise CertsegError(f"denoiser directory {path} has no {sub}/; save the UNet2DModel and DDPMScheduler "
                               f"with save_pretrained into {path}/unet and {path}/scheduler")
    try:
        # .float(): bundled colour denoisers store fp16 weights; the network runs (and is certified) in fp32.
        unet = UNet2DModel.from_pretrained(path / "unet", local_files_only=True, low_cpu_mem_usage=False).float().eval()
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as e:
        raise CertsegError(f"cannot load the denoiser from {path}: {str(e).splitlines()[0]}")
    if scheduler.config.prediction_type != "epsilon":
        raise CertsegError(f"denoiser scheduler predicts {scheduler.config.prediction_type!r}; one-step "
                           f"denoising here needs an epsilon-prediction DDPM")
    files = {f"denoiser/{p.relative_to(path)}": p for p in sorted(path.rglob("*")) if p.is_file()}
    return unet, scheduler, files
