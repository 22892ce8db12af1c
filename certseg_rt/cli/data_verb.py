"""fetch-data: real scans with labels from package registries, verified and converted to a data set folder."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import CertsegError
from .common import user_errors
from .group import main


def _sources_epilog() -> str:
    from ..data.fetch import sources

    def release(a: dict) -> str:
        return f"{a['package']}={a['version']} (Debian)" if a["registry"] == "debian" else \
            f"{a['package']}=={a['version']}"

    return "\b\nSources:\n" + "\n".join(f"  {name:<17} {release(s['archive'])}: {s['summary']}"
                                        for name, s in sources().items())


@main.command("fetch-data", epilog=_sources_epilog())
@click.argument("source")
@click.argument("dataset_dir", type=click.Path(path_type=Path))
@click.option("--from", "from_file", type=click.Path(path_type=Path), default=None,
              help="a local copy of the source's release file (offline); it must have the recorded sha256")
@click.option("--window", default=None, metavar="LEVEL,WIDTH",
              help="CT window in Hounsfield units  [default: 50,400, i.e. [-150, 250] HU]")
@click.option("--index-url", default=None,
              help="a simple package index, or for a Debian source a Debian mirror  [default: pip's: "
                   "$PIP_INDEX_URL, pip.conf, else PyPI; apt's mirror, else deb.debian.org]")
@user_errors
def fetch_data(source, dataset_dir, from_file, window, index_url):
    """Fetch SOURCE by exact version, verify its sha256, convert its scans into DATASET_DIR (a new folder).

    CT is windowed in Hounsfield units, MR scaled by its 1st-99th percentiles; every volume is turned to
    radiological display (patient's right on the left, anterior at the top).  DATASET_DIR gets one data
    set per scan (SCAN/images, SCAN/masks: axial slices for certseg-rt evaluate), the volumes as NIfTI with
    their geometry (volumes/), the package's licence and provenance.json (package, version, URL, sha256,
    licence and terms as stated, what the labels are).  Nothing is written if anything fails.

    \b
    Example:
      certseg-rt fetch-data liver-ct data/liver-ct
      certseg-rt evaluate data/liver-ct/lits117 --model liver-ct --out results/
    """
    from ..data.fetch import fetch
    from ..data.scans import CT_WINDOW

    try:
        level_width = CT_WINDOW if window is None else tuple(float(v) for v in window.split(","))
    except ValueError:
        level_width = ()
    if len(level_width) != 2 or not level_width[1] > 0:
        raise CertsegError(f"--window {window!r} must be LEVEL,WIDTH in HU with WIDTH > 0, e.g. 50,400")
    prov = fetch(source, dataset_dir, from_file=from_file, window=level_width, index=index_url)
    for scan in prov["scans"]:
        labelled = scan.get("slices_with_foreground") is not None
        where = f"{dataset_dir}/{scan['name']}/" + ("images" if labelled else "unlabelled")
        fg = "" if scan.get("slices_with_foreground") is None else f", {scan['slices_with_foreground']} with labels"
        click.echo(f"{scan['name']:<13} {scan['modality'].upper()} {'x'.join(map(str, scan['shape']))} "
                   f"at {'x'.join(f'{v:g}' for v in scan['spacing_mm'])} mm: {scan['slices']} slices{fg} -> {where}")
    click.echo(f"licence: {prov['archive']['licence']}; labels and terms in {dataset_dir}/provenance.json", err=True)
