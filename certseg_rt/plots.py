"""Pictures people would rather look at than read.  matplotlib is imported only here (extra [plots])."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int) -> Path:
    """Lay out, write atomically (no half-written PNG on failure) and free the figure."""
    import matplotlib.pyplot as plt

    from .io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def dice_vs_radius(summary: dict, path: Path) -> Path:
    """Certified Dice per foreground class against the certified radius, one line style per config."""
    plt = _pyplot()
    classes = summary["classes"][1:]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = ["-o", "--s", ":^", "-.v"]
    configs = sorted({r["config"] for r in summary["overall"]})
    for ci, config in enumerate(configs):
        rows = sorted((r for r in summary["overall"] if r["config"] == config), key=lambda r: r["radius"])
        radius = [r["radius"] for r in rows]
        for k, name in enumerate(classes):
            ax.plot(radius, [r.get(f"certified_dice_{name}", np.nan) for r in rows], styles[ci % len(styles)],
                    color=f"C{k}", label=f"{name} ({config})")
    ax.set_xlabel("certified L2 radius (sigma * Phi^-1(tau))")
    ax.set_ylabel("certified Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Certified Dice against radius (abstentions count as misses)")
    return _save(fig, path, dpi=120)


def overlay_grid(tiles: list[tuple[str, np.ndarray]], path: Path, columns: int = 4) -> Path:
    """A grid of RGB overlays (io.overlay) with their titles."""
    plt = _pyplot()
    rows = max(1, -(-len(tiles) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, rgb) in zip(axes.ravel(), tiles):
        ax.imshow(rgb)
        ax.set_title(title, fontsize=8)
    fig.suptitle("certified classes coloured; magenta = abstained", fontsize=9)
    return _save(fig, path, dpi=100)


def modality_bars(rows: list[dict], path: Path) -> Path:
    """Certified Dice per modality and sigma, denoiser + segmenter against plain smoothing (summary rows)."""
    plt = _pyplot()
    keys = sorted({(r["modality"], r["sigma"]) for r in rows})
    configs = sorted({r["config"] for r in rows})
    by = {(r["modality"], r["sigma"], r["config"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(keys)), 3.8))
    width = 0.8 / max(1, len(configs))
    for ci, config in enumerate(configs):
        xs = [i + (ci - (len(configs) - 1) / 2) * width for i in range(len(keys))]
        ys = [by[(m, s, config)]["certified_dice"] if (m, s, config) in by else np.nan for m, s in keys]
        ax.bar(xs, ys, width, label=config, color=f"C{ci}")
    ax.set_xticks(range(len(keys)), [f"{m}\nsigma {s:g}" for m, s in keys], fontsize=8)
    ax.set_ylabel("certified Dice")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Certified Dice per modality (abstentions count as misses)")
    return _save(fig, path, dpi=120)
