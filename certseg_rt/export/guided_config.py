"""OpenAI guided-diffusion model flags -> the diffusers configs that compute the same function.

A guided-diffusion checkpoint is a bare ``UNetModel`` state dict: the architecture lives in the
flags it was trained with (``MODEL_FLAGS`` in guided-diffusion's README).  ``GuidedConfig`` holds
those flags with guided-diffusion's own defaults (``script_util.model_and_diffusion_defaults``), so
a flag a user leaves out means what it means there.  From it follow the diffusers ``UNet2DModel``
config (``unet_config``) and ``DDPMScheduler`` config (``scheduler_config``); the tensor-by-tensor
mapping is ``guided_diffusion.py``'s.

How guided-diffusion's pieces map (read from both sources, guided_diffusion/unet.py and diffusers'
unet_2d.py, unet_2d_blocks.py, resnet.py, attention_processor.py, embeddings.py):

* timestep embedding ``[cos, sin]`` with frequencies exp(-ln(1e4) i / half): ``flip_sin_to_cos=True``,
  ``freq_shift=0``; its width is ``num_channels`` and diffusers takes it from ``block_out_channels[0]``,
  so ``channel_mult`` must start at 1 (the 512x512 model's 0.5 has no diffusers equivalent);
* ``use_scale_shift_norm``: ``norm(h) * (1 + scale) + shift`` is ``resnet_time_scale_shift="scale_shift"``;
* ``resblock_updown``: residual blocks that resample (avg-pool / nearest) are ``downsample_type`` /
  ``upsample_type="resnet"``; otherwise a strided 3x3 conv / nearest + 3x3 conv, diffusers' "conv";
* attention after every residual block of a level whose downsampling rate is in
  ``image_size // attention_resolutions`` (``AttnDownBlock2D`` / ``AttnUpBlock2D``) and always in the
  mid block, every attention with its own GroupNorm(32) (diffusers drops the mid block's norm under
  scale-shift unless ``attn_norm_num_groups`` is set, so it is set);
* heads: ``num_head_channels`` is diffusers' ``attention_head_dim``; a fixed ``num_heads`` only where every
  attention layer has the same width (diffusers has one head width per model), or ``num_heads=1``
  (``attention_head_dim=None``: one head as wide as each layer);
* learned sigma: ``out_channels = 2 * in_channels`` (eps first), scheduler ``variance_type="learned_range"``;
* noise schedule: "linear" (beta 1e-4 .. 0.02, scaled by 1000 / steps) is diffusers' "linear" with the same
  ends; "cosine" (improved DDPM) is ``squaredcos_cap_v2``.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field, fields, replace

from ..errors import CertsegError

# guided-diffusion's create_model: channel_mult by image size when the flag is left empty.
DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
NORM_GROUPS = 32  # guided-diffusion's normalization(): GroupNorm32(32, channels), eps 1e-5
NUM_CLASSES = 1000  # guided-diffusion's class-conditional models: ImageNet labels


@dataclass(frozen=True)
class GuidedConfig:
    """guided-diffusion's model and diffusion flags (its defaults), plus the input channels."""
    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    channel_mult: tuple[float, ...] = ()  # () = guided-diffusion's default for image_size
    num_heads: int = 4
    num_head_channels: int = -1
    learn_sigma: bool = False
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    class_cond: bool = False
    in_channels: int = 3  # guided-diffusion's create_model fixes 3 (RGB)
    noise_schedule: str = "linear"
    diffusion_steps: int = 1000
    predict_xstart: bool = False
    sigma_small: bool = False
    name: str = field(default="custom", compare=False)

    @property
    def mult(self) -> tuple[float, ...]:
        if self.channel_mult:
            return tuple(self.channel_mult)
        if self.image_size not in DEFAULT_CHANNEL_MULT:
            raise CertsegError(f"guided-diffusion has no default channel_mult for image_size {self.image_size}; "
                               f"give --channel-mult (e.g. 1,2,2)")
        return DEFAULT_CHANNEL_MULT[self.image_size]

    @property
    def widths(self) -> list[int]:
        return [int(m * self.num_channels) for m in self.mult]

    @property
    def attention_rates(self) -> set[int]:
        """Downsampling rates with attention (guided-diffusion: image_size // resolution)."""
        return {self.image_size // r for r in self.attention_resolutions}

    def level_has_attention(self, level: int) -> bool:
        return 2 ** level in self.attention_rates

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    def heads(self, width: int) -> int:
        """Attention heads of a layer of this width, as guided-diffusion's AttentionBlock computes them."""
        return self.num_heads if self.num_head_channels == -1 else width // self.num_head_channels

    def attention_widths(self) -> list[int]:
        return [w for level, w in enumerate(self.widths) if self.level_has_attention(level)] + [self.widths[-1]]

    def flags(self) -> dict:
        """The flags as guided-diffusion spells them (for the record)."""
        out = {k: v for k, v in asdict(self).items() if k != "name"}
        out["attention_resolutions"] = ",".join(map(str, self.attention_resolutions))
        out["channel_mult"] = ",".join(f"{m:g}" for m in self.channel_mult)
        return out


# guided-diffusion's README, "Sampling from pre-trained models" (MODEL_FLAGS, verbatim; dropout and use_fp16
# change nothing in an fp32 forward pass).
_LSUN = ("--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 --image_size 256 "
         "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
         "--resblock_updown True --use_fp16 True --use_scale_shift_norm True")
PUBLISHED_FLAGS = {
    "256x256_uncond": "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 "
                      "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
                      "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "lsun_bedroom": _LSUN, "lsun_cat": _LSUN, "lsun_horse": _LSUN,
    "lsun_horse_nodropout": _LSUN.replace("--dropout 0.1", "--dropout 0.0"),
    "64x64": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
             "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
             "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
    "128x128": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 "
               "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 "
               "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "256x256": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 "
               "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
               "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "512x512": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 "
               "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
               "--num_res_blocks 2 --resblock_updown False --use_fp16 False --use_scale_shift_norm True",
}
CHECKPOINTS = {"256x256_uncond": "256x256_diffusion_uncond.pt", "lsun_bedroom": "lsun_bedroom.pt",
               "lsun_cat": "lsun_cat.pt", "lsun_horse": "lsun_horse.pt",
               "lsun_horse_nodropout": "lsun_horse_nodropout.pt", "64x64": "64x64_diffusion.pt",
               "128x128": "128x128_diffusion.pt", "256x256": "256x256_diffusion.pt", "512x512": "512x512_diffusion.pt"}
CONFIG_NAMES = (*PUBLISHED_FLAGS, "custom")

# Flags of guided-diffusion's scripts that do not change the function an fp32 forward pass computes, or only the
# sampler: accepted and ignored.
IGNORED_FLAGS = {"dropout", "use_fp16", "use_checkpoint", "timestep_respacing", "use_kl", "rescale_learned_sigmas",
                 "num_heads_upsample", "batch_size", "num_samples", "use_ddim", "clip_denoised"}


def _parse_value(name: str, value, kind):
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise CertsegError(f"model flag {name}={value!r} must be True or False")
    try:
        if name == "attention_resolutions":
            return tuple(int(v) for v in str(value).split(",") if v.strip()) if not isinstance(value, (list, tuple)) \
                else tuple(int(v) for v in value)
        if name == "channel_mult":
            return tuple(float(v) for v in str(value).split(",") if v.strip()) if not isinstance(value, (list, tuple)) \
                else tuple(float(v) for v in value)
        return kind(value)
    except (TypeError, ValueError):
        raise CertsegError(f"model flag {name}={value!r} is not a valid {'list' if kind is tuple else kind.__name__}")


_KINDS = {"image_size": int, "num_channels": int, "num_res_blocks": int, "attention_resolutions": tuple,
          "channel_mult": tuple, "num_heads": int, "num_head_channels": int, "learn_sigma": bool,
          "use_scale_shift_norm": bool, "resblock_updown": bool, "use_new_attention_order": bool, "class_cond": bool,
          "in_channels": int, "noise_schedule": str, "diffusion_steps": int, "predict_xstart": bool,
          "sigma_small": bool}
assert set(_KINDS) == {f.name for f in fields(GuidedConfig)} - {"name"}


def config_from_dict(flags: dict, name: str = "custom", base: GuidedConfig | None = None) -> GuidedConfig:
    """guided-diffusion flags (names with _ or -, as in its scripts) -> GuidedConfig; unknown flags are refused."""
    values, rescale = {}, False
    for key, value in flags.items():
        key = key.lstrip("-").replace("-", "_")
        if key in IGNORED_FLAGS:
            continue
        if key == "rescale_timesteps":  # improved-diffusion: the model saw t * 1000 / steps
            rescale = _parse_value(key, value, bool)
            continue
        if key not in _KINDS:
            raise CertsegError(f"unknown guided-diffusion model flag {key!r}; known: {', '.join(sorted(_KINDS))}")
        values[key] = _parse_value(key, value, _KINDS[key])
    cfg = replace(base or GuidedConfig(), name=name, **values)
    if rescale and cfg.diffusion_steps != 1000:
        raise CertsegError(f"rescale_timesteps with diffusion_steps {cfg.diffusion_steps}: the model was trained on "
                           f"t * 1000 / {cfg.diffusion_steps}, which a diffusers UNet2DModel does not take; "
                           f"not supported")
    return cfg


def config_from_flags(text: str, name: str = "custom", base: GuidedConfig | None = None) -> GuidedConfig:
    """A JSON object of flags, or a MODEL_FLAGS string as in guided-diffusion's README ('--image_size 256 ...')."""
    text = text.strip()
    if text.startswith("{"):
        try:
            flags = json.loads(text)
        except json.JSONDecodeError as e:
            raise CertsegError(f"--model-flags is not valid JSON ({e}); give a JSON object or '--flag value ...'")
        if not isinstance(flags, dict):
            raise CertsegError("--model-flags JSON must be an object of flag names and values")
        return config_from_dict(flags, name, base)
    tokens = shlex.split(text)
    if len(tokens) % 2 or not all(t.startswith("--") for t in tokens[::2]):
        raise CertsegError(f"--model-flags {text[:60]!r} must be '--flag value' pairs, as in guided-diffusion's "
                           f"MODEL_FLAGS, or a JSON object")
    return config_from_dict(dict(zip(tokens[::2], tokens[1::2])), name, base)


PUBLISHED = {name: config_from_flags(text, name=name) for name, text in PUBLISHED_FLAGS.items()}


def published(name: str) -> GuidedConfig:
    if name not in PUBLISHED:
        raise CertsegError(f"--config {name!r} is not a published guided-diffusion model; choose one of "
                           f"{', '.join(CONFIG_NAMES)}")
    return PUBLISHED[name]


def check_convertible(cfg: GuidedConfig) -> None:
    """Refuse, in one line, a configuration with no diffusers UNet2DModel equivalent or no use as a denoiser here."""
    what = f"--config {cfg.name}" if cfg.name != "custom" else "this model"
    if cfg.class_cond:
        raise CertsegError(f"{what} is class-conditional: it needs an ImageNet class label for every image, and "
                           f"certifying an unlabelled image has none to give; use --config 256x256_uncond (the "
                           f"unconditional ImageNet model, 256x256_diffusion_uncond.pt, the denoiser of Carlini "
                           f"et al.)")
    for name, value in (("image_size", cfg.image_size), ("num_channels", cfg.num_channels),
                        ("num_res_blocks", cfg.num_res_blocks), ("in_channels", cfg.in_channels),
                        ("diffusion_steps", cfg.diffusion_steps)):
        if value < 1:
            raise CertsegError(f"model flag {name}={value} must be >= 1")
    if not cfg.attention_resolutions or min(cfg.attention_resolutions) < 1:
        raise CertsegError(f"attention_resolutions {cfg.flags()['attention_resolutions']!r} must list resolutions "
                           f">= 1 (e.g. 32,16,8; one larger than image_size for none)")
    if cfg.mult[0] != 1:
        raise CertsegError(f"{what} has channel_mult starting at {cfg.mult[0]:g}: its timestep embedding is "
                           f"{cfg.num_channels} wide but its first level {cfg.widths[0]}, which diffusers' UNet2DModel "
                           f"cannot express (both are block_out_channels[0]); use a model whose channel_mult starts "
                           f"at 1")
    bad = [w for w in cfg.widths if w % NORM_GROUPS or w < 1]
    if bad or any(m * cfg.num_channels != int(m * cfg.num_channels) for m in cfg.mult):
        raise CertsegError(f"channel widths {cfg.widths} (num_channels x channel_mult) must be whole multiples of "
                           f"{NORM_GROUPS} (guided-diffusion's GroupNorm32 groups); check --num-channels and "
                           f"--channel-mult")
    if cfg.noise_schedule not in ("linear", "cosine"):
        raise CertsegError(f"noise_schedule {cfg.noise_schedule!r} must be 'linear' or 'cosine' (guided-diffusion's)")
    widths = cfg.attention_widths()
    if cfg.num_head_channels != -1:
        if cfg.num_head_channels < 1 or any(w % cfg.num_head_channels for w in widths):
            raise CertsegError(f"num_head_channels {cfg.num_head_channels} must divide every attention width {widths}")
    elif cfg.num_heads < 1 or any(w % cfg.num_heads for w in widths):
        raise CertsegError(f"num_heads {cfg.num_heads} must divide every attention width {widths}")
    elif cfg.num_heads > 1 and len(set(widths)) > 1:
        raise CertsegError(f"{what} uses num_heads={cfg.num_heads} at attention widths {sorted(set(widths))}: a "
                           f"different head width per level, which diffusers' UNet2DModel (one attention_head_dim) "
                           f"cannot express; only models trained with num_head_channels, num_heads=1, or one "
                           f"attention width convert")


def attention_head_dim(cfg: GuidedConfig) -> int | None:
    if cfg.num_head_channels != -1:
        return cfg.num_head_channels
    if cfg.num_heads == 1:
        return None  # diffusers: one head as wide as each layer
    return cfg.attention_widths()[0] // cfg.num_heads


def unet_config(cfg: GuidedConfig) -> dict:
    """Keyword arguments of diffusers' UNet2DModel computing what guided-diffusion's UNetModel computes."""
    check_convertible(cfg)
    levels = len(cfg.widths)
    resnet = "resnet" if cfg.resblock_updown else "conv"
    plain_down, plain_up = ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if cfg.resblock_updown \
        else ("DownBlock2D", "UpBlock2D")
    down = ["AttnDownBlock2D" if cfg.level_has_attention(i) else plain_down for i in range(levels)]
    up = ["AttnUpBlock2D" if cfg.level_has_attention(i) else plain_up for i in reversed(range(levels))]
    return {
        "sample_size": cfg.image_size, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "center_input_sample": False, "time_embedding_type": "positional", "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": tuple(down), "up_block_types": tuple(up), "mid_block_type": "UNetMidBlock2D",
        "block_out_channels": tuple(cfg.widths), "layers_per_block": cfg.num_res_blocks, "mid_block_scale_factor": 1,
        "downsample_padding": 1, "downsample_type": resnet, "upsample_type": resnet, "dropout": 0.0, "act_fn": "silu",
        "attention_head_dim": attention_head_dim(cfg), "norm_num_groups": NORM_GROUPS,
        "attn_norm_num_groups": NORM_GROUPS,
        "norm_eps": 1e-5, "resnet_time_scale_shift": "scale_shift" if cfg.use_scale_shift_norm else "default",
        "add_attention": True,
    }


def scheduler_config(cfg: GuidedConfig) -> dict:
    """Keyword arguments of diffusers' DDPMScheduler with the checkpoint's training noise schedule."""
    steps = cfg.diffusion_steps
    linear = {"beta_schedule": "linear", "beta_start": 0.0001 * 1000 / steps, "beta_end": 0.02 * 1000 / steps}
    schedule = {"linear": linear, "cosine": {"beta_schedule": "squaredcos_cap_v2"}}[cfg.noise_schedule]
    variance = "learned_range" if cfg.learn_sigma else ("fixed_small" if cfg.sigma_small else "fixed_large")
    return dict(num_train_timesteps=steps, **schedule, variance_type=variance, clip_sample=True, clip_sample_range=1.0,
                prediction_type="sample" if cfg.predict_xstart else "epsilon")
