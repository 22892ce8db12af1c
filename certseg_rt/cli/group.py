"""The click group every verb module registers its commands on."""
from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="certseg-rt")
def main():
    """Certified medical image segmentation: randomized smoothing with a one-step DDPM denoiser.

    \b
    Example:
      certseg-rt demo
      certseg-rt certify scan.png --out mask.png --json
    """
