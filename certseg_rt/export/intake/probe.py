"""What every torch segmenter must do, checked up front on a zero image: take (1, C, H, W), give (1, K, H, W)."""
from __future__ import annotations

from ...errors import CertsegError


def first_conv_in_channels(module) -> int | None:
    """The input channels of the first 4-d weight (the first convolution's, in every network we know)."""
    for _, p in module.named_parameters():
        if p.ndim == 4:
            return int(p.shape[1])
    return None


def probe_segmenter(module, channels: int, height: int, width: int, what: str) -> int:
    """Run the segmenter on zeros (1, channels, height, width); returns its number of classes, or one line."""
    import torch

    try:
        with torch.inference_mode():
            out = module(torch.zeros(1, channels, height, width))
    except Exception as e:  # noqa: BLE001 - the user's network: say what it was given
        takes = first_conv_in_channels(module)
        if takes is not None and takes != channels:
            raise CertsegError(f"{what} takes {takes}-channel images (its first convolution's weight), but the "
                               f"model's input has {channels} channel(s); give a segmenter for {channels}-channel "
                               f"images, or a --model whose input has {takes} channels")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CertsegError(f"{what} fails on a (1, {channels}, {height}, {width}) image ({first}); it must map "
                           f"(B, {channels}, H, W) images in [0, 1] to (B, classes, H, W) logits")
    if isinstance(out, (tuple, list, dict)):
        raise CertsegError(f"{what} returns a {type(out).__name__}; it must return one (B, classes, H, W) tensor "
                           f"of logits (wrap it to return the logits alone)")
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or tuple(out.shape[2:]) != (height, width):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CertsegError(f"{what} maps a (1, {channels}, {height}, {width}) image to {shape}; it must give "
                           f"(B, classes, {height}, {width}) logits")
    return int(out.shape[1])
