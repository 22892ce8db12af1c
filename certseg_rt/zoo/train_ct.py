"""Train the bundled liver-ct model on real CT volumes fetched by ``certseg-rt fetch-data`` (CPU, tens of minutes).

    certseg-rt fetch-data totalsegmentator data/totalsegmentator
    certseg-rt fetch-data pyradiomics data/pyradiomics
    certseg-rt fetch-data slicerio data/slicerio
    python -m certseg_rt.zoo.train_ct --data data/totalsegmentator data/pyradiomics data/slicerio \\
        --weights-dtype fp16 --out certseg_rt/zoo/liver-ct
    python -m certseg_rt.zoo.train_ct --data data/totalsegmentator --plain-sigma 0.25 \\
        --weights-dtype fp16 --out certseg_rt/zoo/liver-ct-plain-0.25

The segmenter learns from the CT volumes whose labels have the model's classes (background, liver,
spleen, kidney: TotalSegmentator's two labelled CTs, labels made by its model, and AMOS case 0336 from
``certseg-rt fetch-data amos-ct``, labels from AMOS's annotators), plus, with
``--pseudo-label SCAN --teacher DIR``, an unlabelled CT labelled by a teacher segmenter where it is sure
(pseudo_label.py: self-training); the denoiser from every CT volume given (labels not needed).  Both
train on augmented 128x128 slices drawn by ct_slices.py (crops around the liver as LiTS makes them, zooms,
whole slices, rotations and elastic warps, small liver cross-sections drawn more often, contrast phase,
positive oral contrast in bowel loops, synthetic hypodense lesions, noise and window jitter), then with the
loops of train.py: the denoiser on the timesteps one-step denoising uses, the segmenter (cross-entropy +
per-image soft Dice) with a third of each batch clean, a third noisy and a third noisy then denoised (or,
with --plain-sigma, noisy at that sigma for plain smoothing).

``--hold-out SCAN`` keeps a labelled training scan out of training and reports the liver Dice on it,
rendered as a LiTS crop (ct_slices.liver_crops), every ``--val-every`` steps: the validation that chooses
recipes and step counts without the test patient.

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
from .ct_slices import CTVolume, batch, liver_crops

MODALITY = "abdominal-ct"
CLASSES = ("background", "liver", "spleen", "kidney")
TEST_SOURCES = ("liver-ct",)
# Large vessels in a source's own labels (they enhance with contrast, ct_slices' contrast phases):
# TotalSegmentator's 'total' classes aorta, inferior vena cava, portal and splenic vein; AMOS's aorta and IVC.
VESSELS = {"totalsegmentator": (52, 63, 64), "amos-ct": (8, 9)}
# The bowel, for oral contrast: TotalSegmentator's stomach, small bowel, duodenum and colon; AMOS's stomach
# and duodenum (it labels no other bowel).
BOWEL = {"totalsegmentator": (6, 18, 19, 20), "amos-ct": (7, 13)}


def load_volumes(dirs: list[Path], pseudo: tuple[str, ...] = ()) -> tuple[list[CTVolume], list[CTVolume], list[dict]]:
    """(labelled CT volumes with the model's classes, all CT volumes, provenance of what was used);
    the scans named in pseudo join the labelled ones once pseudo_labelled() gives them labels."""
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
            source_file = d / "volumes" / f"{scan['name']}_source_label.nii.gz"
            source = np.asanyarray(nib.load(str(source_file)).dataobj) if source_file.is_file() else None
            vessels, bowel = (np.isin(source, table[prov["source"]])
                              if source is not None and prov["source"] in table else None for table in (VESSELS, BOWEL))
            vol = CTVolume(scan["name"], hu, labels, vessels=vessels, bowel=bowel)
            every.append(vol)
            if has_labels:
                labelled.append(vol)
            names.append({"scan": scan["name"], "segmenter": has_labels or scan["name"] in pseudo, "denoiser": True,
                          "labels": scan.get("labels") if scan["name"] not in pseudo else
                          "pseudo-labels: the teacher's confident organs (see pseudo_labels)"})
        used.append({"source": prov["source"], "package": prov["archive"]["package"],
                     "version": prov["archive"]["version"], "sha256": prov["archive"]["sha256"], "scans": names})
    if not labelled:
        raise SystemExit(f"no CT volume with the classes {', '.join(CLASSES)} in {', '.join(map(str, dirs))}: "
                         f"fetch totalsegmentator (certseg-rt fetch-data totalsegmentator DIR)")
    return labelled, every, used


def pseudo_labelled(every: list[CTVolume], names: list[str], teacher: Path) -> tuple[list[CTVolume], dict]:
    """The scans named, labelled by the teacher model's segmenter (self-training), and what was done."""
    import hashlib

    from ..export.loaders import load_model_dir
    from .pseudo_label import with_pseudo_labels

    by_name = {v.name: v for v in every}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(f"--pseudo-label {', '.join(missing)}: no such CT scan in --data "
                         f"(scans: {', '.join(by_name)})")
    seg = load_model_dir(teacher, denoiser=False).segmenter
    weights = teacher / "segmenter.safetensors"
    out, log = [], {"teacher": str(teacher), "teacher_segmenter_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                    "note": "labels made by the teacher model where it is confident, not ground truth; "
                            "unsure voxels are ignored by the loss", "scans": {}}
    for name in names:
        vol, summary = with_pseudo_labels(seg, by_name[name])
        train._log(f"pseudo-labelled {name}: {summary}")
        out.append(vol)
        log["scans"][name] = summary
    return out, log


def validation(volumes: list[CTVolume]):
    """fn(model) -> liver Dice per held-out scan: all its liver slices as LiTS crops, the mean per slice and
    the mean over its small cross-sections (the tip and the dome)."""
    sets = [(v.name, *liver_crops(v), np.isin(v.liver_slices.numpy(), v.small_slices.numpy())) for v in volumes]

    def evaluate(model) -> dict:
        out = {}
        for name, x, y, small in sets:
            pred = torch.cat([model(x[i:i + 32]).argmax(1) for i in range(0, len(x), 32)])
            p, t = pred == 1, y == 1
            dice = (2 * (p & t).sum((1, 2)) / (p.sum((1, 2)) + t.sum((1, 2))).clamp(min=1)).numpy()
            out[name] = {"liver_dice": round(float(dice.mean()), 4), "slices": len(dice),
                         "small_sections": round(float(dice[small].mean()), 4) if small.any() else None}
        return out
    return evaluate


def pool(volumes: list[CTVolume], count: int, rng, labels: bool, **kw) -> tuple[torch.Tensor, torch.Tensor | None]:
    xs, ys = [], []
    for start in range(0, count, 64):
        x, y = batch(volumes, min(64, count - start), rng, **kw)
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
    ap.add_argument("--pseudo-label", nargs="+", default=[], metavar="SCAN",
                    help="unlabelled CT scans to label with --teacher's confident predictions (self-training)")
    ap.add_argument("--teacher", type=Path, help="model folder whose segmenter makes the pseudo-labels")
    ap.add_argument("--hold-out", nargs="+", default=[], metavar="SCAN",
                    help="labelled scans kept out of training and used as validation (LiTS-style crops)")
    ap.add_argument("--val-every", type=int, default=250, help="validation interval in steps (with --hold-out)")
    ap.add_argument("--dice-weight", type=float, default=1.0, help="loss = cross-entropy + this x soft Dice")
    ap.add_argument("--small-bias", type=float, default=0.35,
                    help="share of liver slices drawn from small cross-sections (< 30%% of the largest)")
    ap.add_argument("--no-warp", action="store_true", help="no rotation or elastic warp (the first round's slices)")
    ap.add_argument("--contrast", choices=["coupled", "independent"], default="coupled",
                    help="contrast phases: one enhancement level for all organs, or the first round's shifts")
    ap.add_argument("--oral-contrast", type=float, default=0.5,
                    help="share of slices crossing bowel drawn with positive oral contrast (0: none, as before)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights-dtype", choices=["fp32", "fp16"], default="fp16")
    args = ap.parse_args(argv)
    if args.pseudo_label and args.teacher is None:
        ap.error("--pseudo-label needs --teacher DIR (a model folder with segmenter.json)")
    if not 0 <= args.oral_contrast <= 1:
        ap.error(f"--oral-contrast {args.oral_contrast}: a share of slices, from 0 to 1")

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.weights_dtype]
    t_start = time.time()
    labelled, every, used = load_volumes(args.data, tuple(args.pseudo_label))
    log = {"command": "python -m certseg_rt.zoo.train_ct " + " ".join(argv or sys.argv[1:]),
           "modality": MODALITY, "classes": list(CLASSES), "data": used, "held_out": "liver-ct (LiTS case 117)",
           "pool": args.pool, "seed": args.seed, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "recipe": {"loss": f"cross-entropy + {args.dice_weight} x per-image soft Dice" if args.dice_weight
                      else "cross-entropy", "small_bias": args.small_bias, "warp": not args.no_warp,
                      "contrast": args.contrast, "oral_contrast": args.oral_contrast}}
    if args.pseudo_label:
        extra, log["pseudo_labels"] = pseudo_labelled(every, args.pseudo_label, args.teacher)
        labelled += extra
    held = [v for v in labelled if v.name in args.hold_out]
    if len(held) != len(args.hold_out):
        raise SystemExit(f"--hold-out: labelled scans are {', '.join(v.name for v in labelled)}")
    labelled = [v for v in labelled if v.name not in args.hold_out]
    every = [v for v in every if v.name not in args.hold_out]
    validate = (args.val_every, validation(held)) if held else None
    if held:
        log["validation_scans"] = args.hold_out
    train._log(f"segmenter volumes: {[v.name for v in labelled]}; denoiser volumes: {[v.name for v in every]}")
    draw = {"small_bias": args.small_bias, "warp": not args.no_warp, "coupled": args.contrast == "coupled",
            "oral": args.oral_contrast}
    images, masks = pool(labelled, args.pool, rng, labels=True, **draw)
    train._log(f"drew {len(images)} augmented segmenter slices")
    sets = [(images, masks, 15 if args.plain_sigma is None else 16)]
    common = {"classes": CLASSES, "dice_weight": args.dice_weight, "validate": validate}
    if args.plain_sigma is not None:
        seg, seg_s, history = train.train_segmenter(sets, args.segmenter_steps, rng, MODALITY,
                                                    plain_sigma=args.plain_sigma, **common)
        log.update(plain_sigma=args.plain_sigma)
    else:
        if args.finetune:
            from ..export.loaders import load_denoiser

            unet, sched, _ = load_denoiser(args.out / "denoiser")
            before = json.loads((args.out / "training.json").read_text())  # the denoiser kept: how it was made
            log["denoiser"] = {**before.get("denoiser", {}), "command": before.get("command"),
                               "finished": before.get("finished"), "kept by": "--finetune"}
            kept = set(log["denoiser"].get("volumes", ()))  # a scan new to this run never reached the kept denoiser
            for scan in (s for u in used for s in u["scans"]):
                scan["denoiser"] = scan["scan"] in kept
        else:
            den_images, _ = pool(every, args.denoiser_pool, rng, labels=False)
            train._log(f"drew {len(den_images)} augmented denoiser slices")
            unet, sched, den_s = train.train_denoiser(den_images, args.denoiser_steps, 32, 64, rng, args.out,
                                                      MODALITY, dtype)
            log["denoiser"] = {"steps": args.denoiser_steps, "seconds": round(den_s, 1), "pool": args.denoiser_pool,
                               "volumes": [v.name for v in every]}
        seg, seg_s, history = train.train_segmenter(sets, args.segmenter_steps, rng, MODALITY,
                                                    denoise_fn=train.noisy_then_denoised(unet, sched),
                                                    denoise_together=True, **common)
    log.update(segmenter_steps=args.segmenter_steps, segmenter_seconds=round(seg_s, 1))
    if history:
        log["validation"] = history
    train.save_segmenter(seg, args.out, 128, MODALITY, dtype, classes=CLASSES)
    log["total_seconds"] = round(time.time() - t_start, 1)
    log["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (args.out / "training.json").write_text(json.dumps(log, indent=2) + "\n")
    train._log(f"saved to {args.out}")


if __name__ == "__main__":
    main()
