"""A real pretrained model brought in as users bring theirs: napari-deepmeta's UNet3+ certified on its own scans.

napari-deepmeta 2.1 (PyPI, MIT) ships a pretrained 2-D UNet3+ (``resources/model.pth``: a state dict, 1x128x128
input, classes background / lungs / metastases, mouse lung scans) and a sample stack ``souris_8.tif`` (128 slices
of 128x128).  No ground truth: what is reported is what the certificate keeps of the undefended model.

    python benchmarks/deepmeta.py --out certseg-out/deepmeta                  # chest denoiser vs plain smoothing
    python benchmarks/deepmeta.py --denoiser-model liver-ct --out certseg-out/deepmeta-liver

Steps, as a user would take them:
1. ``pip download --no-deps napari-deepmeta==2.1`` (the wheel, never its dependencies: napari, Qt), its sha256 and
   those of the three files used checked; nothing is committed.  ``--wheel FILE`` for offline use.
2. ``certseg-rt build-engine --segmenter <extracted>/models.py:Unet3plus --segmenter-weights model.pth --classes
   background,lungs,metastases`` (the package's ``__init__`` imports napari's Qt widgets: the factory is named by its
   file, so no package ``__init__`` runs), once with the denoiser of ``--denoiser-model`` (default: the bundled
   chest model's, trained on phantoms only) and once with ``--denoiser none`` (plain randomized smoothing), per sigma.
3. The model's own preprocessing (``deepmeta_functions.contrast_and_reshape``: CLAHE, skimage's
   ``equalize_adapthist`` with clip 0.03, per slice), then every ``--every``-th slice with lungs is certified.

Per configuration and slice: the undefended model's pixels per class (the segmenter alone on the clean slice),
certified pixels per class, abstain rate, agreement (certified pixels whose label is the undefended label) and lung
recall (undefended lung pixels certified as lung).  Writes deepmeta.md, deepmeta.json and overlays.png to --out.
Needs the extra ``deepmeta`` (scikit-image, tifffile): ``pip install 'certseg-rt[deepmeta]'``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from certseg_rt.runtime.model_cache import default_root

PACKAGE = "napari-deepmeta==2.1"
WHEEL = "napari_deepmeta-2.1-py3-none-any.whl"
SHA256 = {  # measured on the PyPI wheel of 2.1
    WHEEL: "fccc75a5f8dc6aed51e4995188519e32f94456dec85d40a68a0a883f82f990e0",
    "napari_deepmeta/models.py": "e6313d8e4efd084d0f8d593133ffac61e81b16f93c88a9f5f11a1c0713362892",
    "napari_deepmeta/resources/model.pth": "ef53f3d7285e26ada37f142ab315bc9e98192aa6e6e6d57689cf9ec1e6984944",
    "napari_deepmeta/resources/souris_8.tif": "ba9820d328f17ad432f0fe17840d8d18efdc24fea2b7c4939ca70151534ea466",
}
CLASSES = ("background", "lungs", "metastases")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fetch(cache: Path, wheel: Path | None) -> Path:
    """The three files of the wheel, extracted under `cache` after their hashes are checked."""
    cache.mkdir(parents=True, exist_ok=True)
    if wheel is None:
        wheel = cache / WHEEL
        if not wheel.is_file() or sha256(wheel) != SHA256[WHEEL]:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", PACKAGE,
                            "-d", str(cache), "-q"], check=True)
    if sha256(wheel) != SHA256[WHEEL]:
        sys.exit(f"{wheel} has sha256 {sha256(wheel)}, not the published {SHA256[WHEEL]}: not napari-deepmeta 2.1")
    root = cache / "extracted"
    with zipfile.ZipFile(wheel) as z:
        for name in SHA256:
            if name != WHEEL:
                z.extract(name, root)
                if sha256(root / name) != SHA256[name]:
                    sys.exit(f"{name} in {wheel} does not have its expected sha256")
    return root / "napari_deepmeta"


def preprocess(stack_path: Path) -> np.ndarray:
    """The model's own input: CLAHE per slice (napari-deepmeta's contrast_and_reshape), float32 in [0, 1]."""
    try:
        import tifffile
        from skimage import exposure
    except ImportError as e:
        sys.exit(f"the model's preprocessing needs {e.name} (scikit-image, tifffile): pip install '.[deepmeta]'")

    stack = tifffile.imread(str(stack_path))
    return np.stack([exposure.equalize_adapthist(s, clip_limit=0.03) for s in stack]).astype(np.float32)


def build(package: Path, out: Path, sigma: float, denoiser_model: str | None, backend: str) -> Path:
    """An engine for one configuration (denoiser_model None: plain smoothing), built as a user types it."""
    if (out / "manifest.json").is_file():
        return out
    command = [sys.executable, "-m", "certseg_rt.cli", "build-engine",
               "--segmenter", f"{package / 'models.py'}:Unet3plus",
               "--segmenter-weights", str(package / "resources" / "model.pth"),
               "--classes", ",".join(CLASSES), "--image-size", "128", "--sigma", str(sigma),
               "--backend", backend, "--out", str(out)]
    command += ["--model", denoiser_model] if denoiser_model else ["--denoiser", "none"]
    print("$", " ".join(command[2:]), file=sys.stderr)
    subprocess.run(command, check=True)
    return out


def certify_slices(engine: Path, images: np.ndarray, slices: list[int], params: dict) -> list[dict]:
    from certseg_rt.certify import ABSTAIN
    from certseg_rt.runtime.segmenter import CertifiedSegmenter

    seg = CertifiedSegmenter.load(engine)
    rows = []
    for k in slices:
        x = images[k][None]
        clean = seg.segment(x)
        cert = seg.certify(x, **params)
        certified = cert.labels != ABSTAIN
        lungs = clean == 1
        rows.append({
            "slice": k,
            "undefended": {c: int((clean == i).sum()) for i, c in enumerate(CLASSES)},
            "certified": {c: int((cert.labels == i).sum()) for i, c in enumerate(CLASSES)},
            "abstain_rate": float(np.mean(~certified)),
            "agreement": float(np.mean(cert.labels[certified] == clean[certified])) if certified.any() else None,
            "lung_recall": float(np.mean(cert.labels[lungs] == 1)) if lungs.any() else None,
            "seconds": cert.record["seconds"], "radius": cert.radius,
            "_labels": cert.labels, "_clean": clean,
        })
        print(f"  slice {k:3d}: lungs {rows[-1]['undefended']['lungs']:5d} undefended, "
              f"{rows[-1]['certified']['lungs']:5d} certified; abstain {rows[-1]['abstain_rate']:.1%}",
              file=sys.stderr)
    return rows


def table(results: dict) -> str:
    """The summary over the certified slices, then slices 40 and 64 alone (the issue's hand-run figures)."""
    lines = ["| sigma | smoothing | slices | lungs undefended | lungs certified | lung recall | metastases undefended "
             "| metastases certified | abstain | agreement | s/slice |", "|" + "---|" * 11]
    for (sigma, config), rows in results.items():
        undefended = {c: sum(r["undefended"][c] for r in rows) for c in CLASSES}
        certified = {c: sum(r["certified"][c] for r in rows) for c in CLASSES}
        agree = [r["agreement"] for r in rows if r["agreement"] is not None]
        lines.append(f"| {sigma:g} | {config} | {len(rows)} | {undefended['lungs']} | {certified['lungs']} | "
                     f"{certified['lungs'] / max(undefended['lungs'], 1):.1%} | {undefended['metastases']} | "
                     f"{certified['metastases']} | {np.mean([r['abstain_rate'] for r in rows]):.1%} | "
                     f"{np.mean(agree) if agree else float('nan'):.4f} | {np.mean([r['seconds'] for r in rows]):.2f} |")
    lines += ["", "| sigma | smoothing | slice | lungs undefended | lungs certified | metastases certified | abstain |",
              "|---|---|---|---|---|---|---|"]
    for (sigma, config), rows in results.items():
        for r in rows:
            if r["slice"] in (40, 64):
                lines.append(f"| {sigma:g} | {config} | {r['slice']} | {r['undefended']['lungs']} | "
                             f"{r['certified']['lungs']} | {r['certified']['metastases']} | {r['abstain_rate']:.1%} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("certseg-out/deepmeta"))
    ap.add_argument("--cache", type=Path, default=default_root() / "deepmeta",
                    help="where the wheel is downloaded and extracted (never the repository)")
    ap.add_argument("--wheel", type=Path, default=None, help="a local napari_deepmeta-2.1 wheel (offline)")
    ap.add_argument("--denoiser-model", default="chest",
                    help="bundled model name or model directory whose denoiser goes in front (e.g. liver-ct)")
    ap.add_argument("--sigmas", default="0.25,0.5")
    ap.add_argument("--no-plain", action="store_true",
                    help="leave out plain smoothing (its rows do not depend on --denoiser-model)")
    ap.add_argument("--every", type=int, default=8, help="certify every N-th slice that has lungs")
    ap.add_argument("--slices", default=None, help="comma-separated slice indices instead of --every")
    ap.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "openvino"))
    ap.add_argument("--n0", type=int, default=10)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--alpha", type=float, default=0.001)
    args = ap.parse_args()

    package = fetch(args.cache, args.wheel)
    images = preprocess(package / "resources" / "souris_8.tif")
    sigmas = [float(s) for s in args.sigmas.split(",")]
    denoised = f"{Path(args.denoiser_model).name} denoiser"
    results, tiles, made = {}, [], {}
    params = {"n0": args.n0, "n": args.n, "alpha": args.alpha}
    slices = None
    for sigma in sigmas:
        for config, model in ((denoised, args.denoiser_model), *(() if args.no_plain else (("plain", None),))):
            engine = build(package, args.out / "engines" / f"{'plain' if model is None else 'denoised'}-{sigma:g}",
                           sigma, model, args.backend)
            if slices is None:  # slices where the undefended model sees lungs, every N-th (40 and 64 among them)
                from certseg_rt.runtime.segmenter import CertifiedSegmenter

                seg = CertifiedSegmenter.load(engine)
                with_lungs = [k for k in range(len(images)) if (seg.segment(images[k][None]) == 1).any()]
                slices = [int(s) for s in args.slices.split(",")] if args.slices else \
                    [k for k in with_lungs if k % args.every == 0]
                print(f"{len(with_lungs)} slices with lungs ({with_lungs[0]}..{with_lungs[-1]}); certifying "
                      f"{slices}", file=sys.stderr)
            print(f"sigma {sigma:g}, {config}:", file=sys.stderr)
            start = time.perf_counter()
            results[(sigma, config)] = certify_slices(engine, images, slices, params)
            made[(sigma, config)] = round(time.perf_counter() - start, 1)
    from certseg_rt.io import atomic_path, overlay, write_json

    for k in [s for s in (40, 64) if s in slices]:
        first = results[(sigmas[0], denoised)][slices.index(k)]
        tiles.append((f"slice {k} undefended", overlay(images[k][None], first["_clean"])))
        for (sigma, config), rows in results.items():
            labels = rows[slices.index(k)]["_labels"]
            tiles.append((f"slice {k} {config} sigma {sigma:g}", overlay(images[k][None], labels)))
    text = table(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "deepmeta.md") as tmp:
        tmp.write_text(text)
    write_json(args.out / "deepmeta.json", {
        "package": PACKAGE, "sha256": SHA256, "classes": CLASSES, "slices": slices, "parameters": params,
        "backend": args.backend, "denoiser_model": args.denoiser_model,
        "seconds": {f"{s:g} {c}": t for (s, c), t in made.items()},
        "rows": {f"{s:g} {c}": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
                 for (s, c), rows in results.items()}})
    if tiles:
        try:
            from certseg_rt.plots import overlay_grid

            overlay_grid(tiles, args.out / "overlays.png", columns=1 + len(results))
        except ImportError:
            print("matplotlib is not installed: no overlays.png", file=sys.stderr)
    print(f"results in {args.out}/ (deepmeta.md, deepmeta.json, overlays.png)", file=sys.stderr)


if __name__ == "__main__":
    main()
