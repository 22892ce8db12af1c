"""import-denoiser: published DDPM checkpoints -> a diffusers directory that build-engine --denoiser takes."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import CertsegError
from .common import check_writable, user_errors
from .group import main

# --config custom: guided-diffusion's flags (its names, dashes for underscores); None = guided-diffusion's default.
CUSTOM_FLAGS = [
    ("--image-size", int, "image_size", "training resolution [guided-diffusion default: 64]"),
    ("--num-channels", int, "num_channels", "base width [128]"),
    ("--num-res-blocks", int, "num_res_blocks", "residual blocks per level [2]"),
    ("--attention-resolutions", str, "attention_resolutions", "resolutions with attention, e.g. 32,16,8 [16,8]"),
    ("--channel-mult", str, "channel_mult", "width multipliers per level, e.g. 1,2,2 [by image size]"),
    ("--num-heads", int, "num_heads", "attention heads [4]"),
    ("--num-head-channels", int, "num_head_channels", "channels per head; overrides --num-heads [-1: off]"),
    ("--learn-sigma", str, "learn_sigma", "True/False: learned variance, 2x output channels [False]"),
    ("--use-scale-shift-norm", str, "use_scale_shift_norm", "True/False [True]"),
    ("--resblock-updown", str, "resblock_updown", "True/False: residual blocks resample [False]"),
    ("--use-new-attention-order", str, "use_new_attention_order", "True/False: qkv split before heads [False]"),
    ("--in-channels", int, "in_channels", "image channels [3]"),
    ("--noise-schedule", str, "noise_schedule", "linear or cosine [linear]"),
    ("--diffusion-steps", int, "diffusion_steps", "training steps [1000]"),
]


@main.group("import-denoiser")
def import_denoiser():
    """Convert a published DDPM checkpoint into a diffusers directory for build-engine --denoiser.

    \b
    Example:
      certseg-rt import-denoiser guided-diffusion 256x256_diffusion_uncond.pt --config 256x256_uncond --out ddpm/
      certseg-rt build-engine --model skin --denoiser ddpm/ --image-size 256 --out engines/skin-adm
    """


def _custom_options(fn):
    for flag, kind, _, help_text in reversed(CUSTOM_FLAGS):
        fn = click.option(flag, type=kind, default=None, help=f"custom: {help_text}")(fn)
    return fn


def _config(config: str, model_flags: str | None, custom: dict):
    from ..export.guided_config import config_from_dict, config_from_flags, published

    given = {k: v for k, v in custom.items() if v is not None}
    if config != "custom":
        if model_flags or given:
            names = ", ".join(f"--{k.replace('_', '-')}" for k in given) or "--model-flags"
            raise CertsegError(f"{names} apply to --config custom only; --config {config} fixes the architecture")
        return published(config)
    cfg = config_from_flags(model_flags) if model_flags else None
    return config_from_dict(given, base=cfg) if given else (cfg or config_from_dict({}))


@import_denoiser.command("guided-diffusion")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--config", "config", required=True,
              type=click.Choice(["256x256_uncond", "lsun_bedroom", "lsun_cat", "lsun_horse", "lsun_horse_nodropout",
                                 "64x64", "128x128", "256x256", "512x512", "custom"]),
              help="the published model the checkpoint is (guided-diffusion's README), or custom with its flags")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="new folder: unet/ + scheduler/")
@click.option("--model-flags", default=None,
              help="custom: the training flags, as guided-diffusion's MODEL_FLAGS string or a JSON object")
@_custom_options
@click.option("--json", "as_json", is_flag=True, help="print what was written as JSON")
@user_errors
def guided_diffusion_cmd(checkpoint, config, out, model_flags, as_json, **custom):
    """Convert an OpenAI guided-diffusion UNetModel checkpoint (a state dict, read with weights_only=True).

    \b
    Writes OUT/unet (diffusers UNet2DModel, safetensors), OUT/scheduler (DDPMScheduler with the
    checkpoint's training noise schedule) and OUT/certseg_import.json (source hash, flags).
    Class-conditional models (64x64, 128x128, 256x256, 512x512) are refused: they need a class label.

    \b
    Example:
      certseg-rt import-denoiser guided-diffusion 256x256_diffusion_uncond.pt --config 256x256_uncond --out adm/
      certseg-rt import-denoiser guided-diffusion my.pt --config custom --out my-ddpm/ \\
          --model-flags "--image_size 64 --num_channels 128 --learn_sigma True --noise_schedule cosine"
    """
    from ..export.guided_config import check_convertible
    from ..export.guided_diffusion import import_guided_diffusion, layout
    from .common import progress_of

    cfg = _config(config, model_flags, {name: custom[name] for _, _, name, _ in CUSTOM_FLAGS})
    check_convertible(cfg)
    check_writable(out)
    if not Path(checkpoint).is_file():
        raise CertsegError(f"checkpoint {checkpoint} does not exist (or is not a file)")
    with progress_of(None, total=len(layout(cfg)), desc="converting tensors") as bar:
        result = import_guided_diffusion(checkpoint, cfg, out, log=lambda m: click.echo(m, err=True),
                                         progress=bar.update)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        sigma = "learned sigma: eps is the first half of the output" if cfg.learn_sigma else "fixed variance"
        click.echo(f"wrote {out} (--config {cfg.name}: {result['parameters']:,} parameters, {cfg.in_channels} -> "
                   f"{cfg.out_channels} channels, {sigma}, {cfg.noise_schedule} schedule of {cfg.diffusion_steps} "
                   f"steps); use it with: certseg-rt build-engine --denoiser {out} --image-size {cfg.image_size}")
