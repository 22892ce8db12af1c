"""Train the bundled liver-ct model on real CT volumes fetched by ``certseg-rt fetch-data`` (CPU, tens of minutes).

    certseg-rt fetch-data totalsegmentator data/totalsegmentator
    certseg-rt fetch-data pyradiomics data/pyradiomics
    certseg-rt fetch-data slicerio data/slicerio
    python -m certseg_rt.zoo.train_ct --data data/totalsegmentator data/pyradiomics data/slicerio \\
        --weights-dtype fp16 --out certseg_rt/zoo/liver-ct
    python -m certseg_rt.zoo.train_ct --data data/totalsegmentator --plain-sigma 0.25 \\
        --weights-dtype fp16 --out certseg_rt/zoo/liver-ct-plain-0.25

The segmenter learns from the CT volumes whose labels have the model's classes (background, liver,
spleen, kidney: TotalSegmentator's two labelled CTs, labels made by its model); the denoiser from every
CT volume given (labels not needed).  Both train on pools of augmented 128x128 slices drawn by
ct_slices.py (crops around the liver as LiTS makes them, zooms, whole slices, contrast phase, synthetic
hypodense lesions, noise and window jitter), then with the loops of train.py: the denoiser on the
timesteps one-step denoising uses, the segmenter with a third of each batch clean, a third noisy and a
third noisy then denoised (or, with --plain-sigma, noisy at that sigma for plain smoothing).

The LiTS scan (source liver-ct) is the test patient: a data folder of that source is refused.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import train
from .ct_slices import CTVolume, batch

MODALITY = "abdominal-ct"
CLASSES = ("background", "liver", "spleen", "kidney")
TEST_SOURCES = ("liver-ct",)


def load_volumes(dirs: list[Path]) -> tuple[list[CTVolume], list[CTVolume], list[dict]]:
    """(labelled CT volumes with the model's classes, all CT volumes, provenance of what was used)."""
    import nibabel as nib

    labelled, every, used = [], [], []
    for d in dirs:
        prov = json.loads((d / "provenance.json").read_text())
        if prov["source"] in TEST_SOURCES or any(s.get("role") == "test" for s in prov["scans"]):
            raise SystemExit(f"{d} holds {prov['source']}, the held-out test patient: never train on it")
        names = []
        for scan in prov["scans"]:
            if scan["modality"] != "ct":
                continue
            hu = np.asanyarray(nib.load(str(d / "volumes" / f"{scan['name']}.nii.gz")).dataobj)
            label_file = d / "volumes" / f"{scan['name']}_label.nii.gz"
            has_labels = tuple(scan.get("classes") or ()) == CLASSES and label_file.is_file()
            labels = np.asanyarray(nib.load(str(label_file)).dataobj) if has_labels else None
            vol = CTVolume(scan["name"], hu, labels)
            every.append(vol)
            if has_labels:
                labelled.append(vol)
            names.append({"scan": scan["name"], "segmenter": has_labels, "denoiser": True,
                          "labels": scan.get("labels")})
        used.append({"source": prov["source"], "package": prov["archive"]["package"],
                     "version": prov["archive"]["version"], "sha256": prov["archive"]["sha256"], "scans": names})
    if not labelled:
        raise SystemExit(f"no CT volume with the classes {', '.join(CLASSES)} in {', '.join(map(str, dirs))}: "
                         f"fetch totalsegmentator (certseg-rt fetch-data totalsegmentator DIR)")
    return labelled, every, used


def pool(volumes: list[CTVolume], count: int, rng, labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    xs, ys = [], []
    for start in range(0, count, 64):
        x, y = batch(volumes, min(64, count - start), rng)
        xs.append(x)
        if labels:
            ys.append(y.to(torch.uint8))
    return torch.cat(xs), (torch.cat(ys) if labels else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="fetch-data output folders")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pool", type=int, default=6000, help="augmented slices drawn for the segmenter")
    ap.add_argument("--denoiser-pool", type=int, default=6000, help="augmented slices drawn for the denoiser")
    ap.add_argument("--denoiser-steps", type=int, default=1500)
    ap.add_argument("--segmenter-steps", type=int, default=2000)
    ap.add_argument("--plain-sigma", type=float, default=None,
                    help="train only a segmenter with Gaussian noise of this std (plain smoothing, no denoiser)")
    ap.add_argument("--finetune", action="store_true", help="keep the denoiser in --out, train the segmenter afresh")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights-dtype", choices=["fp32", "fp16"], default="fp16")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.weights_dtype]
    t_start = time.time()
    labelled, every, used = load_volumes(args.data)
    train._log(f"segmenter volumes: {[v.name for v in labelled]}; denoiser volumes: {[v.name for v in every]}")
    images, masks = pool(labelled, args.pool, rng, labels=True)
    train._log(f"drew {len(images)} augmented segmenter slices")
    log = {"command": "python -m certseg_rt.zoo.train_ct " + " ".join(argv or sys.argv[1:]),
           "modality": MODALITY, "classes": list(CLASSES), "data": used, "held_out": "liver-ct (LiTS case 117)",
           "pool": args.pool, "seed": args.seed, "torch": torch.__version__, "threads": torch.get_num_threads()}
    sets = [(images, masks, 15 if args.plain_sigma is None else 16)]
    if args.plain_sigma is not None:
        seg, seg_s = train.train_segmenter(sets, args.segmenter_steps, rng, MODALITY, plain_sigma=args.plain_sigma,
                                           classes=CLASSES)
        log.update(segmenter_steps=args.segmenter_steps, segmenter_seconds=round(seg_s, 1), plain_sigma=args.plain_sigma)
    else:
        if args.finetune:
            from ..export.loaders import load_denoiser

            unet, sched, _ = load_denoiser(args.out / "denoiser")
            den_s = 0.0
            log["denoiser"] = json.loads((args.out / "training.json").read_text()).get("denoiser")
        else:
            den_images, _ = pool(every, args.denoiser_pool, rng, labels=False)
            train._log(f"drew {len(den_images)} augmented denoiser slices")
            unet, sched, den_s = train.train_denoiser(den_images, args.denoiser_steps, 32, 64, rng, args.out,
                                                      MODALITY, dtype)
            log["denoiser"] = {"steps": args.denoiser_steps, "seconds": round(den_s, 1), "pool": args.denoiser_pool,
                               "volumes": [v.name for v in every]}
        seg, seg_s = train.train_segmenter(sets, args.segmenter_steps, rng, MODALITY,
                                           denoise_fn=train.noisy_then_denoised(unet, sched), classes=CLASSES,
                                           denoise_together=True)
        log.update(segmenter_steps=args.segmenter_steps, segmenter_seconds=round(seg_s, 1))
    train.save_segmenter(seg, args.out, 128, MODALITY, dtype, classes=CLASSES)
    log["total_seconds"] = round(time.time() - t_start, 1)
    log["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (args.out / "training.json").write_text(json.dumps(log, indent=2) + "\n")
    train._log(f"saved to {args.out}")


if __name__ == "__main__":
    main()
