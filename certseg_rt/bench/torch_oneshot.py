"""The careful PyTorch user's one-shot script: the baseline of ``bench --cold``.

What a careful user writes to get the samples of one certify out of their own torch model, run as its own
process: import torch, diffusers and their network; load the weights; read the image; draw n0 + n noisy copies
and run them through the one-step denoiser and the segmenter **in one batch**, at the CPU's best precision and
layout (bf16 autocast and channels_last here), and count the votes.  It does less than ``certseg-rt certify``
(no statistics, no certificate, no mask written, torch's own noise), so the comparison is lenient to torch.

Run by its path (not ``-m``), nothing from certseg-rt is imported: the user's network is loaded from its source
file, as a user's own ``unet.py`` would be (the bundled model's ``segmenter.json`` names it), and the DDPM from its diffusers folder.

    python certseg_rt/bench/torch_oneshot.py IMAGE MODEL_DIR [--samples 110] [--sigma 0.25] [--warm K]
        [--precision bf16|fp32] [--layout channels_last|nchw] [--serve]

prints one JSON line: the seconds of each stage (import, load, first pass, and the median of ``--warm`` more
passes in the same process).  ``--serve`` then times one more pass per line read from stdin, printing its
seconds (``bench --cold`` alternates these warm passes with an engine's certifies).  ``tests/test_cold_start.py``
checks that its labels are the torch reference's.
"""
from __future__ import annotations

import sys
import time

START = time.perf_counter()


def main(argv: list[str]) -> dict:
    import argparse

    p = argparse.ArgumentParser(prog="torch_oneshot")
    p.add_argument("image")
    p.add_argument("model_dir")
    p.add_argument("--samples", type=int, default=110)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--layout", choices=["channels_last", "nchw"], default="channels_last")
    p.add_argument("--warm", type=int, default=0, help="passes timed after the first, in the same process")
    p.add_argument("--labels-out", default=None, help="save the first pass's labels (.npy), for the test")
    p.add_argument("--serve", action="store_true", help="then one timed pass per line of stdin")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads [default: torch's, all cores]")
    a = p.parse_args(argv)

    import importlib.util
    import json
    from pathlib import Path

    import numpy as np
    import torch
    from diffusers import DDPMScheduler, UNet2DModel
    from PIL import Image
    from safetensors.torch import load_file
    imported = time.perf_counter()
    if a.threads:
        torch.set_num_threads(a.threads)

    model_dir = Path(a.model_dir)
    config = json.loads((model_dir / "segmenter.json").read_text())
    module_name, _, factory = config["factory"].partition(":")
    source = Path(__file__).resolve().parents[1].joinpath(*module_name.split(".")[1:]).with_suffix(".py")
    spec = importlib.util.spec_from_file_location("user_network", source)
    network = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(network)
    segmenter = getattr(network, factory)(**config["kwargs"])
    segmenter.load_state_dict(load_file(model_dir / "segmenter.safetensors"))
    unet = UNet2DModel.from_pretrained(model_dir / "denoiser" / "unet", local_files_only=True,
                                       low_cpu_mem_usage=False).float()
    scheduler = DDPMScheduler.from_pretrained(model_dir / "denoiser" / "scheduler", local_files_only=True)
    layout = torch.channels_last if a.layout == "channels_last" else torch.contiguous_format
    segmenter, unet = segmenter.eval().to(memory_format=layout), unet.eval().to(memory_format=layout)
    # One-step denoising (Carlini et al.): t* with sqrt((1 - abar) / abar) closest to 2 sigma.
    abar = scheduler.alphas_cumprod.double()
    t = int(torch.argmin(((1 - abar) / abar).sqrt().sub(2 * a.sigma).abs()))
    a_t = float(abar[t])
    prediction = scheduler.config.prediction_type
    channels = config["input"]["channels"]
    with Image.open(a.image) as im:
        pixels = np.asarray(im.convert("L" if channels == 1 else "RGB"), np.float32) / 255.0
    x = torch.from_numpy(pixels[None] if channels == 1 else np.moveaxis(pixels, -1, 0).copy())[None]
    loaded = time.perf_counter()

    def samples(seed: int):
        g = torch.Generator().manual_seed(seed)
        noisy = x + a.sigma * torch.randn((a.samples, *x.shape[1:]), generator=g)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=a.precision == "bf16"):
            x_t = (a_t ** 0.5) * (2 * noisy - 1)
            x_t = x_t.contiguous(memory_format=layout)
            out = unet(x_t, torch.full((a.samples,), t), return_dict=False)[0][:, :x.shape[1]].float()
            if prediction == "epsilon":
                x0 = (x_t - (1 - a_t) ** 0.5 * out) / a_t ** 0.5
            elif prediction == "v_prediction":
                x0 = a_t ** 0.5 * x_t - (1 - a_t) ** 0.5 * out
            else:
                x0 = out
            labels = segmenter((x0.clamp(-1, 1) + 1) / 2).argmax(1)
        votes = torch.nn.functional.one_hot(labels.long(), config["kwargs"]["num_classes"]).sum(0)
        return labels, votes

    labels, votes = samples(0)
    first = time.perf_counter()
    warm = []
    for i in range(a.warm):
        start = time.perf_counter()
        samples(i + 1)
        warm.append(time.perf_counter() - start)
    if a.labels_out:
        np.save(a.labels_out, labels.to(torch.uint8).numpy())
    if a.serve:
        print("ready", flush=True)
        for line in sys.stdin:
            start = time.perf_counter()
            samples(int(line))
            print(time.perf_counter() - start, flush=True)
    return {"samples": a.samples, "precision": a.precision, "layout": a.layout, "threads": torch.get_num_threads(),
            "import_seconds": round(imported - START, 4), "load_seconds": round(loaded - imported, 4),
            "first_pass_seconds": round(first - loaded, 4),
            "warm_pass_seconds": round(sorted(warm)[len(warm) // 2], 4) if warm else None,
            "warm_passes": [round(w, 4) for w in warm], "votes_total": int(votes.sum())}


if __name__ == "__main__":
    import json as _json

    print(_json.dumps(main(sys.argv[1:])))
