"""Three phantom modalities, one table: clean Dice, certified Dice and abstain rate at sigma 0.25 and 0.5,
with the one-step DDPM denoiser (bundled `chest`, `skin`, `polyp`) and without it (plain randomized
smoothing: segmenters `<modality>-plain-<sigma>` trained with Gaussian noise of that sigma).

    python benchmarks/modality_table.py --out certseg-out/modalities --count 10

Writes modality_table.md, modality_table.json and modality_dice.png into --out (per-image results,
resumable, under it).  Uses the torch reference backend.
"""
import argparse
import json
from pathlib import Path

from sigma_table import run_cli

from certseg_rt.io import atomic_path, write_json
from certseg_rt.plots import modality_bars

MODALITIES = ("chest", "skin", "polyp")
SIGMAS = (0.25, 0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("certseg-out/modalities"))
    ap.add_argument("--count", type=int, default=10, help="held-out phantoms per modality")
    args = ap.parse_args()
    rows = []
    for modality in MODALITIES:
        data = args.out / "data" / modality
        if not (data / "images").is_dir():
            run_cli("make-phantoms", data, "--count", args.count, "--modality", modality)
        out = args.out / modality
        run_cli("evaluate", data, "--out", out / "denoised", "--model", modality,
                "--sigma", ",".join(map(str, SIGMAS)), "--config-name", "denoised")
        rows += json.loads((out / "denoised" / "summary.json").read_text())["overall"]
        for sigma in SIGMAS:
            run_cli("evaluate", data, "--out", out / f"plain-{sigma}", "--model", f"{modality}-plain-{sigma}",
                    "--sigma", sigma, "--no-denoiser", "--config-name", "plain")
            rows += json.loads((out / f"plain-{sigma}" / "summary.json").read_text())["overall"]
    write_json(args.out / "modality_table.json", {"overall": rows})
    modality_bars(rows, args.out / "modality_dice.png")
    by = {(r["modality"], r["config"], r["sigma"]): r for r in rows}
    lines = ["| modality | sigma | radius | clean Dice (denoised / plain) | certified Dice, denoiser + segmenter | "
             "certified Dice, plain smoothing | abstain (denoised / plain) |", "|---|---|---|---|---|---|---|"]
    for m in MODALITIES:
        for s in SIGMAS:
            d, p = by[(m, "denoised", s)], by[(m, "plain", s)]
            lines.append(f"| {m} | {s} | {d['radius']:.3f} | {d['clean_dice']:.3f} / {p['clean_dice']:.3f} | "
                         f"{d['certified_dice']:.3f} | {p['certified_dice']:.3f} | "
                         f"{d['abstain_rate']:.1%} / {p['abstain_rate']:.1%} |")
    table = "\n".join(lines) + (f"\n\n{args.count} held-out phantoms per modality, 128x128, tau 0.75, alpha 0.001, "
                                f"n0 10, n 100, Holm; Dice is the mean over foreground classes.\n")
    with atomic_path(args.out / "modality_table.md") as tmp:
        tmp.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
