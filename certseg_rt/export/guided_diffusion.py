"""Import an OpenAI guided-diffusion UNetModel checkpoint as a diffusers directory (UNet2DModel + DDPMScheduler).

The checkpoint is read with ``torch.load(weights_only=True)``: tensors only, no code is unpickled.
``layout(cfg)`` walks guided-diffusion's ``UNetModel.__init__`` for a configuration (the same loops,
in the same order) and yields one ``Rule`` per checkpoint tensor: its key and shape there, and the
diffusers parameter(s) it becomes.  Conversion refuses unless the checkpoint's key/shape set is exactly
the walk's (naming the published configuration it looks like, by shape) and the converted set is exactly
the diffusers model's: every tensor used, every parameter filled.

The one tensor that is not copied as is: attention's fused 1x1 ``qkv`` conv (3C x C).  guided-diffusion's
legacy order (``QKVAttentionLegacy``, the published models but 64x64) splits heads first, so its rows are
[head][q|k|v][channel]; the new order (``QKVAttention``) splits q|k|v first, [q|k|v][head][channel].
diffusers' ``to_q``/``to_k``/``to_v`` are C x C linears with rows [head][channel] (heads concatenated).
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import CertsegError
from .guided_config import NUM_CLASSES, PUBLISHED, GuidedConfig, scheduler_config, unet_config

IMPORT_RECORD = "certseg_import.json"


@dataclass(frozen=True)
class Rule:
    source: str  # checkpoint key
    shape: tuple[int, ...]
    targets: tuple[tuple[str, tuple[int, ...]], ...]  # diffusers keys and shapes
    split: Callable | None = None  # tensor -> one tensor per target (None: the tensor itself, reshaped)


def _conv(g: str, d: str, cin: int, cout: int, k: int, dims: int = 2) -> list[Rule]:
    w = (cout, cin, *(k,) * dims)
    return [Rule(f"{g}.weight", w, ((f"{d}.weight", w),)), Rule(f"{g}.bias", (cout,), ((f"{d}.bias", (cout,)),))]


def _linear(g: str, d: str, cin: int, cout: int) -> list[Rule]:
    return [Rule(f"{g}.weight", (cout, cin), ((f"{d}.weight", (cout, cin)),)),
            Rule(f"{g}.bias", (cout,), ((f"{d}.bias", (cout,)),))]


def _norm(g: str, d: str, c: int) -> list[Rule]:
    return [Rule(f"{g}.{p}", (c,), ((f"{d}.{p}", (c,)),)) for p in ("weight", "bias")]


def _resblock(g: str, d: str, cin: int, cout: int, emb: int, cfg: GuidedConfig) -> list[Rule]:
    rules = [*_norm(f"{g}.in_layers.0", f"{d}.norm1", cin), *_conv(f"{g}.in_layers.2", f"{d}.conv1", cin, cout, 3),
             *_linear(f"{g}.emb_layers.1", f"{d}.time_emb_proj", emb, 2 * cout if cfg.use_scale_shift_norm else cout),
             *_norm(f"{g}.out_layers.0", f"{d}.norm2", cout), *_conv(f"{g}.out_layers.3", f"{d}.conv2", cout, cout, 3)]
    if cin != cout:  # guided-diffusion's 1x1 skip conv (use_conv=False), diffusers' conv_shortcut
        rules += _conv(f"{g}.skip_connection", f"{d}.conv_shortcut", cin, cout, 1)
    return rules


def _qkv_split(heads: int, c: int, legacy: bool):
    def split(t):
        rows = t.reshape(heads, 3, c // heads, -1) if legacy else t.reshape(3, heads, c // heads, -1).transpose(0, 1)
        return [rows[:, i].reshape(c, -1).squeeze(-1).contiguous() for i in range(3)]
    return split


def _attention(g: str, d: str, c: int, cfg: GuidedConfig) -> list[Rule]:
    split = _qkv_split(cfg.heads(c), c, legacy=not cfg.use_new_attention_order)
    qkv = tuple(f"{d}.to_{x}" for x in "qkv")
    return [*_norm(f"{g}.norm", f"{d}.group_norm", c),
            Rule(f"{g}.qkv.weight", (3 * c, c, 1), tuple((f"{n}.weight", (c, c)) for n in qkv), split),
            Rule(f"{g}.qkv.bias", (3 * c,), tuple((f"{n}.bias", (c,)) for n in qkv), split),
            Rule(f"{g}.proj_out.weight", (c, c, 1), ((f"{d}.to_out.0.weight", (c, c)),)),
            Rule(f"{g}.proj_out.bias", (c,), ((f"{d}.to_out.0.bias", (c,)),))]


def layout(cfg: GuidedConfig) -> list[Rule]:
    """One rule per tensor of guided-diffusion's UNetModel for `cfg`, in its construction order."""
    mc, widths, emb = cfg.num_channels, cfg.widths, 4 * cfg.num_channels
    rules = [*_linear("time_embed.0", "time_embedding.linear_1", mc, emb),
             *_linear("time_embed.2", "time_embedding.linear_2", emb, emb)]
    if cfg.class_cond:
        rules.append(Rule("label_emb.weight", (NUM_CLASSES, emb), (("class_embedding.weight", (NUM_CLASSES, emb)),)))
    ch = widths[0]
    rules += _conv("input_blocks.0.0", "conv_in", cfg.in_channels, ch, 3)
    skips, k, last = [ch], 1, len(widths) - 1
    for level, width in enumerate(widths):
        for i in range(cfg.num_res_blocks):
            rules += _resblock(f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{i}", ch, width, emb, cfg)
            ch = width
            if cfg.level_has_attention(level):
                rules += _attention(f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{i}", ch, cfg)
            skips.append(ch)
            k += 1
        if level != last:
            if cfg.resblock_updown:
                rules += _resblock(f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0", ch, ch, emb, cfg)
            else:
                rules += _conv(f"input_blocks.{k}.0.op", f"down_blocks.{level}.downsamplers.0.conv", ch, ch, 3)
            skips.append(ch)
            k += 1
    rules += [*_resblock("middle_block.0", "mid_block.resnets.0", ch, ch, emb, cfg),
              *_attention("middle_block.1", "mid_block.attentions.0", ch, cfg),
              *_resblock("middle_block.2", "mid_block.resnets.1", ch, ch, emb, cfg)]
    k = 0
    for up, (level, width) in enumerate(reversed(list(enumerate(widths)))):
        for i in range(cfg.num_res_blocks + 1):
            rules += _resblock(f"output_blocks.{k}.0", f"up_blocks.{up}.resnets.{i}", ch + skips.pop(), width, emb, cfg)
            ch, layer = width, 1
            if cfg.level_has_attention(level):
                rules += _attention(f"output_blocks.{k}.1", f"up_blocks.{up}.attentions.{i}", ch, cfg)
                layer = 2
            if level and i == cfg.num_res_blocks:
                if cfg.resblock_updown:
                    rules += _resblock(f"output_blocks.{k}.{layer}", f"up_blocks.{up}.upsamplers.0", ch, ch, emb, cfg)
                else:
                    rules += _conv(f"output_blocks.{k}.{layer}.conv", f"up_blocks.{up}.upsamplers.0.conv", ch, ch, 3)
            k += 1
    rules += [*_norm("out.0", "conv_norm_out", ch), *_conv("out.2", "conv_out", widths[0], cfg.out_channels, 3)]
    return rules


def expected_shapes(cfg: GuidedConfig) -> dict[str, tuple[int, ...]]:
    return {r.source: r.shape for r in layout(cfg)}


def _summary(shapes: dict) -> str:
    """What a checkpoint's shapes say about its architecture."""
    def dim(key, i):
        return shapes[key][i] if key in shapes and len(shapes[key]) > i else "?"
    inputs = {k.split(".")[1] for k in shapes if k.startswith("input_blocks.")}
    return (f"num_channels {dim('time_embed.0.weight', 1)}, {dim('input_blocks.0.0.weight', 1)} -> "
            f"{dim('out.2.weight', 0)} channels, {len(inputs)} input blocks, "
            f"{sum(k.endswith('qkv.weight') for k in shapes)} attention layers"
            f"{', class-conditional' if 'label_emb.weight' in shapes else ''}")


def diagnose(shapes: dict[str, tuple[int, ...]], cfg: GuidedConfig) -> str | None:
    """None if the checkpoint's keys and shapes are exactly cfg's; else one line saying how they differ."""
    want = expected_shapes(cfg)
    if shapes == want:
        return None
    missing = [k for k in want if k not in shapes]
    unexpected = [k for k in shapes if k not in want]
    differ = [k for k in want if k in shapes and tuple(shapes[k]) != want[k]]
    like = [name for name, other in PUBLISHED.items() if name != cfg.name and _shapes_or_none(other) == shapes]
    detail = "; ".join(part for part in (
        f"{len(missing)} keys missing (e.g. {missing[0]})" if missing else "",
        f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
        f"{len(differ)} of other shapes (e.g. {differ[0]} {tuple(shapes[differ[0]])} vs {want[differ[0]]})"
        if differ else "") if part)
    if like:
        fix = f"it has the keys and shapes of --config {like[0]}; pass that"
    else:
        fix = (f"it matches no published config ({_summary(shapes)}); give its training flags with --config custom "
               f"--model-flags '...'")
    return f"the checkpoint does not fit --config {cfg.name} ({detail}): {fix}"


def _shapes_or_none(cfg: GuidedConfig):
    try:
        return expected_shapes(cfg)
    except CertsegError:
        return None


def _first_sentence(e: Exception) -> str:
    text = " ".join(str(e).split()).split(". ")[0][:120]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_checkpoint(path: Path) -> dict:
    """A guided-diffusion state dict, tensors only (weights_only=True: no code is unpickled)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CertsegError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            state = torch.load(str(path), map_location="cpu", weights_only=True)  # pre-1.6 (non-zip) format
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:  # weights_only met a Python object: unpickling it would import and run its code
            raise CertsegError(f"{path} holds Python objects besides tensors ({found.group(1)}); it is refused because "
                               f"loading it would run code: save the state dict alone, "
                               f"torch.save(model.state_dict(), path)")
        stopped = re.search(r"Unsupported operand \d+|invalid load key[^.]*", str(e))
        raise CertsegError(f"{path} is not a torch.save checkpoint (the unpickler stopped at "
                           f"{stopped.group(0) if stopped else _first_sentence(e)}); check the file, or download it "
                           f"again")
    except Exception as e:  # noqa: BLE001 (torch.load on arbitrary bytes: EOFError, KeyError, RuntimeError...)
        raise CertsegError(f"cannot read {path} as a torch checkpoint ({_first_sentence(e)}); the "
                           f"file is truncated or not a torch.save file: download it again")
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                            for k, v in state.items()):
        kind = type(state).__name__
        keys = ", ".join(list(map(str, state))[:4]) if isinstance(state, dict) else ""
        holds = f"a {kind} with keys {keys}" if keys else f"a {kind}"
        raise CertsegError(f"{path} is not a state dict of tensors (it holds {holds}); save the UNetModel's state "
                           f"dict: torch.save(model.state_dict(), path)")
    return state


def convert_state_dict(state: dict, cfg: GuidedConfig, progress=None) -> dict:
    """guided-diffusion tensors -> diffusers UNet2DModel tensors (float32), refusing any mismatch in one line."""
    import torch

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    problem = diagnose(shapes, cfg)
    if problem:
        raise CertsegError(problem)
    out = {}
    for rule in layout(cfg):
        tensor = state[rule.source].to(torch.float32)
        parts = rule.split(tensor) if rule.split else [tensor.reshape(rule.targets[0][1])]
        for (name, shape), part in zip(rule.targets, parts):
            if tuple(part.shape) != shape:  # a bug in the walk, not the user's
                raise CertsegError(f"internal: {rule.source} -> {name} gave {tuple(part.shape)}, expected {shape}; "
                                   f"report this with the --config used")
            out[name] = part.contiguous()
        if progress:
            progress(1)
    return out


def diffusers_shapes(cfg: GuidedConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of the diffusers UNet2DModel for cfg, by shape (built on the meta device: no memory)."""
    return {k: tuple(v.shape) for k, v in _meta_unet(cfg).state_dict().items()}


def _meta_unet(cfg: GuidedConfig):
    import torch
    from diffusers import UNet2DModel

    with torch.device("meta"):
        return UNet2DModel(**unet_config(cfg))


def check_complete(converted: dict, cfg: GuidedConfig) -> None:
    """Every diffusers parameter filled with a tensor of its shape, nothing left over."""
    want = diffusers_shapes(cfg)
    got = {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in converted.items()}
    unfilled = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if unfilled or extra or wrong:
        raise CertsegError(f"internal: the conversion for --config {cfg.name} leaves {len(unfilled)} diffusers "
                           f"parameters unfilled (e.g. {unfilled[:2]}), {len(extra)} extra (e.g. {extra[:2]}), "
                           f"{len(wrong)} misshapen (e.g. {wrong[:2]}); report this with the --config used")


def _ordinary_permissions(folder: Path) -> None:
    """safetensors writes its file private (0600); a model folder is as readable as any file the user writes."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o666 & ~mask)


def import_guided_diffusion(checkpoint: Path, cfg: GuidedConfig, out: Path, log=print, progress=None) -> dict:
    """Write out/unet (UNet2DModel, safetensors) + out/scheduler (DDPMScheduler) + out/certseg_import.json.

    Staged in a hidden sibling and renamed into place: a refusal or failure leaves nothing behind.
    """
    from diffusers import DDPMScheduler

    from ..io import write_json
    from ..manifest import sha256_file
    from .build import staged_directory

    unet_kwargs, sched_kwargs = unet_config(cfg), scheduler_config(cfg)  # refuses unconvertible configs first
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CertsegError(f"--out {out} already exists; choose a new folder (nothing is overwritten)")
    state = load_checkpoint(checkpoint)
    converted = convert_state_dict(state, cfg, progress=progress)
    check_complete(converted, cfg)
    unet = _meta_unet(cfg)
    unet.load_state_dict(converted, strict=True, assign=True)
    unet.eval()
    count = sum(t.numel() for t in converted.values())
    with staged_directory(out) as stage:
        log(f"writing {out}/unet ({count:,} parameters, float32 safetensors) and {out}/scheduler")
        unet.save_pretrained(stage / "unet", safe_serialization=True)
        DDPMScheduler(**sched_kwargs).save_pretrained(stage / "scheduler")
        record = {"source": "openai/guided-diffusion UNetModel state dict", "checkpoint": Path(checkpoint).name,
                  "checkpoint_sha256": sha256_file(Path(checkpoint)), "config": cfg.name, "flags": cfg.flags(),
                  "parameters": count, "certseg_rt": __version__}
        write_json(stage / IMPORT_RECORD, record)
        _ordinary_permissions(stage)
    del state, converted, unet
    return {**record, "out": str(out), "unet": unet_kwargs, "scheduler": sched_kwargs}
