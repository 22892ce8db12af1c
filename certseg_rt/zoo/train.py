"""Train the bundled default models on generated phantoms (CPU, minutes).

    python -m certseg_rt.zoo.train --out certseg_rt/zoo/chest
    python -m certseg_rt.zoo.train --modality skin --out certseg_rt/zoo/skin --weights-dtype fp16

1. Denoiser: a small diffusers ``UNet2DModel`` with a 1000-step linear ``DDPMScheduler``, trained
   with the usual epsilon loss but only on the timesteps whose noise level matches smoothing noise
   sigma in [0.1, 1.1] (all that one-step denoising ever uses), on 64x64 crops (denoising is local;
   crops make each step 4x cheaper).
2. Segmenter: a small UNet on full 128x128 phantoms, cross-entropy, with noise augmentation: a
   third of each batch clean, a third with Gaussian noise of random sigma, a third noisy and then
   denoised by the denoiser of step 1 at a random sigma in [0.2, 0.55] -- the inputs it sees when certified.

``--modality`` picks the phantoms (chest, skin, polyp); the colour modalities get narrower networks
(binary lesion masks are an easier task) stored as fp16 safetensors to keep the bundled weights small
(the model that is certified is the fp32 network with those fp16-rounded weights; the hashes say which).

``--plain-sigma S`` instead trains a segmenter alone with Gaussian noise of std S (plain randomized
smoothing, no denoiser), the baseline of the sigma table.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import TRAIN_SEEDS
from ..data.modalities import MODALITIES, get_modality, make_batch
from ..diffusion import timestep_for_sigma
from ..export.denoise_segment import OneStepDenoiser
from .unet import SegUNet

# Network sizes per modality: chest (4 classes, the default model) wider than the binary colour tasks.
# abdominal-ct: the real-data model of train_ct.py (grayscale CT slices), sized for the 10 MB weight budget.
WIDTHS = {"chest": {"segmenter": [12, 24, 48, 64], "denoiser": [8, 16, 32, 64]},
          "skin": {"segmenter": [8, 16, 32, 48], "denoiser": [8, 16, 32, 48]},
          "polyp": {"segmenter": [8, 16, 32, 48], "denoiser": [8, 16, 32, 48]},
          "abdominal-ct": {"segmenter": [8, 16, 32, 48], "denoiser": [8, 16, 32, 32]}}


def _channels(modality: str) -> int:
    return get_modality(modality).channels if modality in MODALITIES else 1  # real-data models: grayscale


def segmenter_kwargs(modality: str, classes=None) -> dict:
    classes = get_modality(modality).classes if classes is None else classes
    return {"in_channels": _channels(modality), "num_classes": len(classes), "widths": WIDTHS[modality]["segmenter"]}


def denoiser_kwargs(modality: str) -> dict:
    channels = _channels(modality)
    return {"sample_size": 128, "in_channels": channels, "out_channels": channels, "layers_per_block": 1,
            "block_out_channels": WIDTHS[modality]["denoiser"], "norm_num_groups": 4, "add_attention": False,
            "down_block_types": ["DownBlock2D"] * 4, "up_block_types": ["UpBlock2D"] * 4}


SCHEDULER_KWARGS = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                    "beta_end": 0.02, "clip_sample": True, "prediction_type": "epsilon"}
SIGMA_RANGE = (0.1, 1.1)


def _cosine_lr(opt, step, total, base):
    for g in opt.param_groups:
        g["lr"] = base * 0.5 * (1 + math.cos(math.pi * step / total))


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_denoiser(images, steps, batch, crop, rng, out_dir, modality, dtype):
    from diffusers import DDPMScheduler, UNet2DModel

    sched = DDPMScheduler(**SCHEDULER_KWARGS)
    abar = sched.alphas_cumprod.double()
    ratio = ((1 - abar) / abar).sqrt()
    t_pool = torch.nonzero((ratio >= 2 * SIGMA_RANGE[0]) & (ratio <= 2 * SIGMA_RANGE[1])).flatten()
    unet = UNet2DModel(**denoiser_kwargs(modality))
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=0.0)
    n, _, size, _ = images.shape
    t0 = time.time()
    for step in range(steps):
        _cosine_lr(opt, step, steps, 2e-3)
        idx = rng.integers(0, n, batch)
        ys, xs = rng.integers(0, size - crop + 1, (2, batch))
        x0 = torch.stack([images[i, :, y:y + crop, x:x + crop] for i, y, x in zip(idx, ys, xs)]) * 2 - 1
        t = t_pool[torch.from_numpy(rng.integers(0, len(t_pool), batch))]
        eps = torch.randn_like(x0)
        x_t = sched.add_noise(x0, eps, t)
        loss = nn.functional.mse_loss(unet(x_t, t).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            _log(f"denoiser step {step}/{steps} loss {loss.item():.4f}")
    unet.eval()
    unet.to(dtype).save_pretrained(out_dir / "denoiser" / "unet")
    unet.float()
    sched.save_pretrained(out_dir / "denoiser" / "scheduler")
    return unet, sched, time.time() - t0


def noisy_then_denoised(unet, sched):
    """fn(x, sigma): x plus Gaussian noise of std sigma, then one-step denoised (the segmenter's input when certified)."""
    denoisers = {}

    def denoise_fn(x, sigma):
        step = timestep_for_sigma(sched.alphas_cumprod.numpy(), sigma)
        if step.timestep not in denoisers:
            denoisers[step.timestep] = OneStepDenoiser(unet, step)
        return denoisers[step.timestep](x + sigma * torch.randn_like(x))
    return denoise_fn


def soft_dice_loss(logits: torch.Tensor, y: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """1 - mean soft Dice over the (image, foreground class) pairs whose class the image's labels hold.

    Per image, so a small liver cross-section weighs as much as a large one -- as in the mean per-slice
    Dice the model is judged by -- where cross-entropy counts pixels.  Ignored pixels count for neither."""
    valid = (y != ignore_index).unsqueeze(1).float()
    probs = logits.softmax(1)[:, 1:] * valid
    target = nn.functional.one_hot(y.clamp(max=logits.shape[1] - 1) * (y != ignore_index), logits.shape[1])
    target = target.permute(0, 3, 1, 2)[:, 1:].float() * valid
    inter, total = (probs * target).sum((2, 3)), (probs + target).sum((2, 3))
    present = target.sum((2, 3)) > 0
    if not present.any():
        return logits.sum() * 0
    return 1 - ((2 * inter + 1) / (total + 1))[present].mean()


def train_segmenter(sets, steps, rng, modality, denoise_fn=None, plain_sigma=None, init=None, lr=3e-3, classes=None,
                    denoise_together=False, dice_weight=0.0, validate=None):
    """sets: [(images, masks, batch)], taken in turn (one per resolution); init: weights to start from;
    denoise_together: the denoised third of a batch shares one sigma per step and goes through the denoiser
    in one call (several times faster on a CPU; the phantom models were trained one sample at a time);
    dice_weight: loss = cross-entropy + dice_weight * soft Dice (labels 255 are skipped by both);
    validate: (every, fn(model) -> dict) called every `every` steps and at the end, its results returned.
    Returns (model, seconds, validation history)."""
    model = SegUNet(**segmenter_kwargs(modality, classes))
    if init is not None:
        from ..export.loaders import load_safetensors_into

        load_safetensors_into(model, init)
    model = model.to(memory_format=torch.channels_last)  # about 1.7x faster convolutions on a CPU
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    t0, history = time.time(), []
    for step in range(steps):
        _cosine_lr(opt, step, steps, lr)
        images, masks, batch = sets[step % len(sets)]
        idx = torch.from_numpy(rng.integers(0, images.shape[0], batch))
        x, y = images[idx].clone(), masks[idx].long()
        if plain_sigma is not None:
            # Plain smoothing: most of the batch at the smoothing sigma, some clean for stability.
            s = torch.where(torch.rand(batch) < 0.8, plain_sigma, torch.rand(batch) * plain_sigma)
            x = x + s.view(-1, 1, 1, 1) * torch.randn_like(x)
        else:
            third = batch // 3
            s = torch.rand(batch) * 0.55
            x[third:] = x[third:] + s[third:].view(-1, 1, 1, 1) * torch.randn_like(x[third:])
            with torch.no_grad():
                if denoise_together:
                    x[2 * third:] = denoise_fn(x[2 * third:], float(rng.uniform(0.2, 0.55)))
                else:
                    for i in range(2 * third, batch):
                        x[i:i + 1] = denoise_fn(x[i:i + 1], float(rng.uniform(0.2, 0.55)))
        logits = model(x.contiguous(memory_format=torch.channels_last))
        loss = nn.functional.cross_entropy(logits, y, ignore_index=255)
        if dice_weight:
            loss = loss + dice_weight * soft_dice_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            _log(f"segmenter step {step}/{steps} loss {loss.item():.4f}")
        if validate is not None and ((step + 1) % validate[0] == 0 or step == steps - 1):
            model.eval()
            with torch.no_grad():
                history.append({"step": step + 1, **validate[1](model)})
            model.train()
            _log(f"validation {history[-1]}")
    model.eval()
    return model.to(memory_format=torch.contiguous_format), time.time() - t0, history


def save_segmenter(model, out_dir, size, modality, dtype, classes=None):
    from safetensors.torch import save_file

    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()},
              str(out_dir / "segmenter.safetensors"))
    classes = get_modality(modality).classes if classes is None else classes
    kwargs = segmenter_kwargs(modality, classes)
    config = {
        "factory": "certseg_rt.zoo.unet:SegUNet",
        "kwargs": kwargs,
        "classes": list(classes),
        "modality": modality,
        "input": {"channels": kwargs["in_channels"], "height": size, "width": size, "range": [0.0, 1.0],
                  "size_multiple": 2 ** (len(kwargs["widths"]) - 1)},
    }
    (out_dir / "segmenter.json").write_text(json.dumps(config, indent=2) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--phantoms", type=int, default=3000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--denoiser-steps", type=int, default=1500)
    ap.add_argument("--segmenter-steps", type=int, default=1200)
    ap.add_argument("--plain-sigma", type=float, default=None,
                    help="train only a segmenter with Gaussian noise of this std (no denoiser)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modality", choices=sorted(MODALITIES), default="chest")
    ap.add_argument("--finetune", action="store_true",
                    help="continue training the segmenter in --out (with its denoiser) instead of starting afresh")
    ap.add_argument("--extra-size", type=int, default=None,
                    help="also train on phantoms of this side (every other step), e.g. 256 for a model that "
                         "certifies both 128x128 and 256x256 images")
    ap.add_argument("--weights-dtype", choices=["fp32", "fp16"], default="fp32",
                    help="dtype the weights are stored in (they are loaded into fp32 networks)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    _log(f"generating {args.phantoms} phantoms")
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.weights_dtype]
    images, masks = make_batch(args.modality, TRAIN_SEEDS[:args.phantoms], args.size)
    images, masks = torch.from_numpy(images), torch.from_numpy(masks)
    sets = [(images, masks, 15 if args.plain_sigma is None else 16)]
    if args.extra_size:
        # A quarter of the phantoms at the extra size; fewer per batch as each costs (extra/size)^2 more.
        big, big_masks = make_batch(args.modality, TRAIN_SEEDS[:args.phantoms // 4], args.extra_size)
        per = max(3, 3 * round(15 * (args.size / args.extra_size) ** 2 / 3 * 1.5))
        sets.append((torch.from_numpy(big), torch.from_numpy(big_masks), per))
    log = {"command": "python -m certseg_rt.zoo.train " + " ".join(argv or __import__("sys").argv[1:]),
           "modality": args.modality, "phantoms": args.phantoms, "torch": torch.__version__, "threads": torch.get_num_threads()}

    if args.plain_sigma is not None:
        seg, seg_s, _ = train_segmenter(sets, args.segmenter_steps, rng, args.modality, plain_sigma=args.plain_sigma)
        log.update(segmenter_steps=args.segmenter_steps, segmenter_seconds=round(seg_s, 1), plain_sigma=args.plain_sigma)
    else:
        if args.finetune:
            from ..export.loaders import load_denoiser

            unet, sched, _ = load_denoiser(args.out / "denoiser")
            den_s = 0.0
        else:
            unet, sched, den_s = train_denoiser(images, args.denoiser_steps, 32, 64, rng, args.out, args.modality,
                                                dtype)
        denoise_fn = noisy_then_denoised(unet, sched)
        init = args.out / "segmenter.safetensors" if args.finetune else None
        seg, seg_s, _ = train_segmenter(sets, args.segmenter_steps, rng, args.modality, denoise_fn=denoise_fn,
                                     init=init, lr=1e-3 if args.finetune else 3e-3)
        if args.finetune:  # the log keeps how the model was first trained, and adds this step
            log = {**json.loads((args.out / "training.json").read_text()),
                   "finetune": {**log, "segmenter_steps": args.segmenter_steps, "extra_size": args.extra_size,
                                "segmenter_seconds": round(seg_s, 1)}}
        else:
            log.update(denoiser_steps=args.denoiser_steps, denoiser_seconds=round(den_s, 1),
                       segmenter_steps=args.segmenter_steps, segmenter_seconds=round(seg_s, 1))
    save_segmenter(seg, args.out, args.size, args.modality, dtype)
    (args.out / "training.json").write_text(json.dumps(log, indent=2) + "\n")
    _log(f"saved to {args.out}: {log}")


if __name__ == "__main__":
    main()
