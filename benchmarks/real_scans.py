"""The paper's table on a real patient: certified liver Dice on LiTS case 117, denoiser vs plain smoothing.

    python benchmarks/real_scans.py                       # fetch, evaluate, write the table and figures
    python benchmarks/real_scans.py --n 100 --out certseg-out/real-scans --docs docs

Fetches the test patient (``certseg-rt fetch-data liver-ct``: LiTS case 117, expert labels, never used in
training), then certifies every axial slice (all 128 have liver) with the bundled ``liver-ct`` model
(one-step DDPM denoiser + segmenter) at sigma 0.25, 0.5 and 1.0, and with plain randomized smoothing
(segmenters ``liver-ct-plain-0.25`` / ``-0.5``, trained with Gaussian noise of that sigma, no denoiser) at
0.25 and 0.5, through ``certseg-rt evaluate`` (torch reference backend, resumable).  Liver Dice counts
tumour as liver (the LiTS label 2 is mapped to liver by fetch-data); abstained pixels count as misses.

Then the volume row: the whole scan certified at once (``certseg-rt certify lits117.nii.gz --window -150,250``,
Holm over all 2,097,152 voxels, so the guarantee is joint over the volume).  Where this install's ``certify`` does not
take volumes, one line says so and the row is left out.

Writes into --out: real_scans.md (the table), real_scans.json, and the evaluate folders; into --docs:
real_scans_dice_vs_sigma.png and real_scans_overlays.png (image | expert mask | certified, denoiser and
plain, a few slices).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from sigma_table import run_cli

from certseg_rt.io import atomic_path, write_json

DENOISED_SIGMAS = (0.25, 0.5, 1.0)
PLAIN_SIGMAS = (0.25, 0.5)
FIGURE_SLICES = (8, 24, 64, 104)  # the tip (missed), its lower part, the middle, near the dome
WINDOW = "-150,250"  # fetch-data's CT window (level 50, width 400) as certify's LO,HI


def configs():
    yield "denoised", "liver-ct", DENOISED_SIGMAS, []
    for s in PLAIN_SIGMAS:
        yield "plain", f"liver-ct-plain-{s}", (s,), ["--no-denoiser"]


def evaluate_slices(data: Path, out: Path, params: list[str]) -> list[dict]:
    rows = []
    for config, model, sigmas, extra in configs():
        dest = out / (config if config == "denoised" else f"plain-{sigmas[0]}")
        run_cli("evaluate", data, "--out", dest, "--model", model, "--sigma", ",".join(map(str, sigmas)),
                "--config-name", config, "--score-classes", "liver", *extra, *params)
        rows += [{**r, "scope": "slices"} for r in json.loads((dest / "summary.json").read_text())["overall"]]
    return rows


def certify_volume(volume: Path, label: Path, out: Path, params: list[str]) -> list[dict]:
    """Rows of the whole volume certified at once, or [] (said in one line) where certify takes no volumes."""
    import nibabel as nib

    truth = np.asanyarray(nib.load(str(label)).dataobj) == 1
    rows = []
    for config, model, sigmas, extra in configs():
        for sigma in sigmas:
            mask = out / f"volume-{config}-{sigma}.nii.gz"
            # The HU volume with the slices' window ([-150, 250] HU), so each slice is the data set's image.
            cmd = [sys.executable, "-m", "certseg_rt.cli", "certify", str(volume), "--model", model,
                   "--window", WINDOW, "--sigma", str(sigma), "--out", str(mask), "--json", *params]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                said = (run.stderr.strip().splitlines() or ["no message"])[-1]
                print(f"the volume certify is not available in this install (certify {volume.name} said: {said})",
                      file=sys.stderr)
                return []
            cert = json.loads(run.stdout)
            got = np.asanyarray(nib.load(str(mask)).dataobj)
            tp = np.count_nonzero((got == 1) & truth)
            dice = 2 * tp / (np.count_nonzero(got == 1) + np.count_nonzero(truth))
            rows.append({"scope": "volume", "config": config, "sigma": sigma, "certified_dice_liver": dice,
                         "abstain_rate": float(np.mean(got == 255)), "radius": cert.get("radius"),
                         "clean_dice_liver": None, "images": 1, "certificate": cert})
    return rows


def table(rows: list[dict], params: str) -> str:
    lines = ["| scope | sigma | radius | certified liver Dice, denoiser + segmenter | certified liver Dice, plain "
             "smoothing | abstain (denoiser / plain) | clean liver Dice (denoiser's segmenter / plain's) |",
             "|---|---|---|---|---|---|---|"]
    by = {(r["scope"], r["config"], r["sigma"]): r for r in rows}

    def f(r, key, fmt):
        return "-" if r is None or r.get(key) is None else format(r[key], fmt)

    for scope in ("slices", "volume"):
        for s in DENOISED_SIGMAS:
            d, p = by.get((scope, "denoised", s)), by.get((scope, "plain", s))
            if d is None:
                continue
            lines.append(f"| {'128 slices' if scope == 'slices' else 'the volume'} | {s} | {f(d, 'radius', '.3f')} | "
                         f"{f(d, 'certified_dice_liver', '.3f')} | {f(p, 'certified_dice_liver', '.3f') if p else 'no model'}"
                         f" | {f(d, 'abstain_rate', '.1%')} / {f(p, 'abstain_rate', '.1%')} | "
                         f"{f(d, 'clean_dice_liver', '.3f')} / {f(p, 'clean_dice_liver', '.3f')} |")
    return "\n".join(lines) + f"\n\nLiTS case 117 (expert labels, tumour counted as liver), all 128 axial slices; {params}.\n"


def figures(data: Path, rows: list[dict], docs: Path, n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from certseg_rt.certify import certify
    from certseg_rt.io import overlay, read_image
    from certseg_rt.runtime.backends import open_model
    from certseg_rt.zoo import bundled_model_dir

    docs.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for config, style in (("denoised", "o-"), ("plain", "s--")):
        pts = sorted((r["sigma"], r["certified_dice_liver"]) for r in rows if r["config"] == config
                     and r["scope"] == "slices")
        ax.plot(*zip(*pts), style, label="denoiser + segmenter" if config == "denoised" else "plain smoothing")
    ax.set_xlabel("sigma")
    ax.set_ylabel("certified liver Dice")
    ax.set_ylim(0, 1)
    ax.set_title("LiTS case 117, 128 slices (abstentions count as misses)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(docs / "real_scans_dice_vs_sigma.png", dpi=120)
    plt.close(fig)

    models = {"denoised": open_model(bundled_model_dir("liver-ct"), 0.25, batch_size=16),
              "plain": open_model(bundled_model_dir("liver-ct-plain-0.25"), 0.25, batch_size=16, denoiser=False)}
    fig, ax = plt.subplots(len(FIGURE_SLICES), 4, figsize=(10, 2.6 * len(FIGURE_SLICES)))
    for i, k in enumerate(FIGURE_SLICES):
        name = f"lits117_{k:03d}"
        x = read_image(data / "images" / f"{name}.png")
        truth = np.asarray(Image.open(data / "masks" / f"{name}.png"))
        tiles = [(overlay(x, np.zeros_like(truth)), f"slice {k}"), (overlay(x, truth), "expert mask")]
        for config, backend in models.items():
            cert = certify(backend, x, n0=10, n=n, tau=0.75, alpha=0.001, seed=0, correction="holm")
            tiles.append((overlay(x, cert.labels), f"certified, {'denoiser' if config == 'denoised' else 'plain'}"
                                                   f" (sigma 0.25)"))
        for j, (tile, title) in enumerate(tiles):
            ax[i, j].imshow(tile)
            ax[i, j].set_title(title, fontsize=8)
            ax[i, j].axis("off")
    fig.suptitle("liver blue, spleen green, kidney red, abstained magenta", fontsize=9)
    fig.tight_layout()
    fig.savefig(docs / "real_scans_overlays.png", dpi=100)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("certseg-out/real-scans"))
    ap.add_argument("--data", type=Path, default=None, help="a fetch-data liver-ct folder [default: OUT/data]")
    ap.add_argument("--docs", type=Path, default=Path("docs"), help="where the figures go")
    ap.add_argument("--n", type=int, default=100, help="estimation samples per certificate")
    ap.add_argument("--no-volume", action="store_true", help="leave out the whole-volume row")
    args = ap.parse_args()
    data = args.data or args.out / "data"
    if not (data / "provenance.json").is_file():
        run_cli("fetch-data", "liver-ct", data)
    params = ["--n", str(args.n)]
    rows = evaluate_slices(data / "lits117", args.out, params)
    if not args.no_volume:
        rows += certify_volume(data / "volumes" / "lits117.nii.gz", data / "volumes" / "lits117_label.nii.gz",
                               args.out, params)
    described = f"tau 0.75, alpha 0.001, n0 10, n {args.n}, Holm (per slice; for the volume over all its voxels)"
    write_json(args.out / "real_scans.json", {"rows": rows, "parameters": described,
                                              "provenance": json.loads((data / "provenance.json").read_text())})
    text = table(rows, described)
    with atomic_path(args.out / "real_scans.md") as tmp:
        tmp.write_text(text)
    figures(data / "lits117", rows, args.docs, args.n)
    print(text)


if __name__ == "__main__":
    main()
