"""The bundled segmenter's architecture: a small UNet (torch).

Loaded by name as ``certseg_rt.zoo.unet:SegUNet`` with a JSON config of its keyword
arguments and safetensors weights -- the same ``module:factory`` path a user's own
segmenter takes, so the bundled model exercises the general intake.
"""
from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SegUNet(nn.Module):
    """x in [0, 1], shape (B, in_channels, H, W) with H, W multiples of 2**(len(widths)-1) -> logits (B, classes, H, W)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4, widths: tuple[int, ...] = (16, 32, 64, 96)):
        super().__init__()
        widths = tuple(widths)
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for w_skip, w_in in zip(reversed(widths[:-1]), reversed(widths[1:])):
            self.up.append(nn.ConvTranspose2d(w_in, w_skip, 2, stride=2))
            self.fuse.append(_block(2 * w_skip, w_skip))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = nn.functional.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1])):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return self.head(x)
