"""Denoiser intake: a diffusers directory (UNet2DModel + DDPMScheduler) -> the pieces one-step denoising needs.

What a denoiser may be (``DenoiserSpec``, read from the UNet's and the scheduler's configs before any
export): an unconditional pixel-space ``UNet2DModel`` whose output is eps, v or x0 (the scheduler's
``prediction_type``), with C output channels, or 2C when it also predicts its variance (learned sigma:
``out_channels == 2 * in_channels``, as guided-diffusion and improved DDPM have, or the scheduler's
``variance_type`` ``learned`` / ``learned_range``): then the first C channels are the output and the rest is
dropped.  Everything else is refused in one line naming what was found and what to do.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..diffusion import PREDICTION_TYPES
from ..errors import CertsegError

LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
IMPORT_HINT = ("for an OpenAI guided-diffusion checkpoint run `certseg-rt import-denoiser guided-diffusion "
               "CKPT.pt --config NAME --out DIR` first")


@dataclass(frozen=True)
class DenoiserSpec:
    """What the one-step denoiser needs to know about a UNet and its scheduler."""

    channels: int  # in_channels: the noise space's channels
    out_channels: int  # channels or 2 * channels (learned variance)
    prediction_type: str  # epsilon | v_prediction | sample
    variance_type: str  # the scheduler's
    sample_size: tuple[int, int] | None  # the resolution it was trained at, when declared
    size_multiple: int  # height and width must be multiples of this (its downsampling)

    @property
    def learned_variance(self) -> bool:
        return self.out_channels == 2 * self.channels

    def describe(self) -> dict:
        """The manifest's view (field denoiser): what the graph does with the UNet's output."""
        return {"prediction_type": self.prediction_type, "channels": self.channels,
                "out_channels": self.out_channels, "learned_variance": self.learned_variance,
                "output_used": f"channels 0..{self.channels - 1}" + (" (the variance channels are dropped)"
                                                                      if self.learned_variance else ""),
                "variance_type": self.variance_type, "x0_clip": [-1.0, 1.0],
                "sample_size": None if self.sample_size is None else list(self.sample_size)}

    def size_note(self, height: int, width: int) -> str | None:
        """A line for stderr when the engine's size is not the one the denoiser was trained at."""
        if self.sample_size is None or self.sample_size == (height, width):
            return None
        h, w = self.sample_size
        size = f"{h}" if h == w else f"{h}x{w}"
        return (f"the denoiser was trained at {h}x{w} (its sample_size) and the engine is built for "
                f"{height}x{width}: it runs at {height}x{width}, where it may denoise less well; to build at "
                f"the denoiser's size, add --image-size {size}")


def _sample_size(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def inspect_denoiser(unet_config, scheduler_config, path: Path | str = "the denoiser") -> DenoiserSpec:
    """The spec of a UNet2DModel config and a scheduler config, or a CertsegError naming the problem."""
    c_in, c_out = int(unet_config["in_channels"]), int(unet_config["out_channels"])
    prediction = scheduler_config.get("prediction_type", "epsilon")
    variance = scheduler_config.get("variance_type", "fixed_small")
    if prediction not in PREDICTION_TYPES:
        raise CertsegError(f"denoiser {path}: its scheduler's prediction_type is {prediction!r}; one-step "
                           f"denoising takes {', '.join(PREDICTION_TYPES)} (set the one the UNet was trained "
                           f"with in scheduler/scheduler_config.json)")
    if c_out not in (c_in, 2 * c_in):
        raise CertsegError(f"denoiser {path}: the UNet takes {c_in} channel(s) and outputs {c_out}; it must "
                           f"output {c_in} (eps, v or x0) or {2 * c_in} (with learned variance), so its channel "
                           f"layout is not a DDPM's: give a UNet2DModel with out_channels {c_in} or {2 * c_in}")
    if unet_config.get("num_class_embeds") is not None or unet_config.get("class_embed_type") is not None:
        raise CertsegError(f"denoiser {path}: the UNet is class-conditional (num_class_embeds "
                           f"{unet_config.get('num_class_embeds')}, class_embed_type "
                           f"{unet_config.get('class_embed_type')}) and one-step denoising calls it without a "
                           f"class: give an unconditional DDPM")
    if unet_config.get("time_embedding_type", "positional") == "fourier":
        raise CertsegError(f"denoiser {path}: the UNet has a Fourier time embedding (a score-SDE / VE model "
                           f"that takes noise levels, not DDPM timesteps): give a DDPM UNet2DModel "
                           f"(positional or learned time embedding) and its DDPMScheduler")
    embeds, steps = unet_config.get("num_train_timesteps"), scheduler_config.get("num_train_timesteps", 1000)
    if unet_config.get("time_embedding_type") == "learned" and embeds is not None and embeds < steps:
        raise CertsegError(f"denoiser {path}: the UNet learned embeddings for {embeds} timesteps but its scheduler "
                           f"has {steps}; save the scheduler it was trained with (num_train_timesteps {embeds})")
    levels = len(unet_config.get("block_out_channels") or ()) or 1
    return DenoiserSpec(channels=c_in, out_channels=c_out, prediction_type=prediction, variance_type=variance,
                        sample_size=_sample_size(unet_config.get("sample_size")),
                        size_multiple=2 ** (levels - 1))


def _read_config(path: Path, what: str, expected: str) -> dict:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CertsegError(f"{path.parent} has no {path.name}: save the {expected} into it with save_pretrained")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CertsegError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); save the "
                           f"{expected} again with save_pretrained")
    if not isinstance(config, dict):
        raise CertsegError(f"{path} is not a JSON object; save the {expected} again with save_pretrained")
    name = config.get("_class_name")
    if what == "unet" and name not in (None, "UNet2DModel"):
        raise CertsegError(f"denoiser {path.parent.parent}: unet/ holds a {name}; one-step denoising takes an "
                           f"unconditional pixel-space UNet2DModel (not a text-, class- or latent-conditioned "
                           f"one); {IMPORT_HINT}")
    if what == "unet" and not all(isinstance(config.get(k), int) for k in ("in_channels", "out_channels")):
        raise CertsegError(f"{path} lacks in_channels / out_channels; save the UNet2DModel again with "
                           f"save_pretrained")
    return config


def _check_layout(path: Path) -> None:
    if not path.exists():
        raise CertsegError(f"denoiser {path} does not exist; give a diffusers directory with unet/ and scheduler/, "
                           f"or --denoiser none for plain randomized smoothing")
    if path.is_file():
        raise CertsegError(f"denoiser {path} is a file; give a diffusers directory (unet/ UNet2DModel and "
                           f"scheduler/ DDPMScheduler, saved with save_pretrained); {IMPORT_HINT}")
    if (path / "config.json").is_file() and not (path / "unet").is_dir():
        raise CertsegError(f"denoiser {path} looks like a UNet saved alone; save it into {path}/unet and its "
                           f"DDPMScheduler into {path}/scheduler (save_pretrained)")
    for sub in ("unet", "scheduler"):
        if not (path / sub).is_dir():
            raise CertsegError(f"denoiser directory {path} has no {sub}/; save the UNet2DModel and DDPMScheduler "
                               f"with save_pretrained into {path}/unet and {path}/scheduler")


def load_denoiser(path: Path):
    """A diffusers directory with unet/ (UNet2DModel) and scheduler/ (DDPMScheduler) -> (unet, scheduler, files).

    The configs are checked (``inspect_denoiser``) before any weight is read."""
    path = Path(path)
    _check_layout(path)
    unet_config = _read_config(path / "unet" / "config.json", "unet", "UNet2DModel")
    scheduler_config = _read_config(path / "scheduler" / "scheduler_config.json", "scheduler", "DDPMScheduler")
    inspect_denoiser(unet_config, scheduler_config, path)

    from diffusers import DDPMScheduler, UNet2DModel

    try:
        # .float(): bundled colour denoisers store fp16 weights; the network runs (and is certified) in fp32.
        unet = UNet2DModel.from_pretrained(path / "unet", local_files_only=True, low_cpu_mem_usage=False).float().eval()
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
    except Exception as e:  # diffusers raises OSError, ValueError, RuntimeError (shapes), safetensors errors...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CertsegError(f"cannot load the denoiser from {path}: {first}; save the UNet2DModel and its "
                           f"DDPMScheduler again with save_pretrained")
    files = {f"denoiser/{p.relative_to(path)}": p for p in sorted(path.rglob("*")) if p.is_file()}
    return unet, scheduler, files


def denoiser_spec(unet, scheduler) -> DenoiserSpec:
    """The spec of loaded models (their configs, as ``load_denoiser`` checked them)."""
    return inspect_denoiser(dict(unet.config), dict(scheduler.config))


def size_multiple_with(size_multiple: int, spec: DenoiserSpec) -> int:
    """The size multiple of a segmenter and a denoiser together."""
    return math.lcm(size_multiple, spec.size_multiple)
