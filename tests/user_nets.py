"""Plain torch segmenters that reproduce the graph patterns users' networks have (segmentation_models_pytorch
needs torchvision, which is not installed here): importable as factories ``user_nets:PoolSeg``."""
import torch
import torch.nn.functional as F
from torch import nn


class PoolSeg(nn.Module):
    """DeepLabV3+'s ASPP image-pooling branch: AdaptiveAvgPool2d(1) + 1x1 conv + bilinear upsample (ReduceMean in
    ONNX, whose `axes` moved from attribute to input at opset 18), concatenated with the features."""

    def __init__(self, in_ch: int = 1, classes: int = 4, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, width, 1), nn.ReLU())
        self.head = nn.Conv2d(2 * width, classes, 1)

    def forward(self, x):
        f = self.stem(x)
        p = F.interpolate(self.pool(f), size=f.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([f, p], 1))


def pool_seg(seed: int = 0, **kwargs) -> PoolSeg:
    """A PoolSeg with seeded random weights and non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = PoolSeg(**kwargs)
    bn = net.stem[1]
    bn.running_mean.uniform_(-0.1, 0.1)
    bn.running_var.uniform_(0.5, 1.5)
    return net.eval()


class Unexportable(nn.Module):
    """Runs in torch, but the TorchScript-based ONNX exporter has no translation for one of its ops (an FFT)."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, classes, 1)

    def forward(self, x):
        return self.conv(torch.fft.fft2(x).real)
