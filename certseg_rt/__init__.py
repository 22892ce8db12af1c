"""certseg-rt: certified medical image segmentation, fast and deployable.

Randomized smoothing (SegCertify) over a one-step DDPM denoiser and a segmenter; every
non-abstained pixel of a certificate keeps its label within an L2 radius, with probability
at least 1 - alpha over the sampling.
"""
from ._ext_loader import EXTENSION_STATUS
from .certify import ABSTAIN, Certificate, Prediction, certify, certify_from_counts, predict, predict_from_counts

from .kernels import philox4x32_raw as philox4x32

__version__ = "0.1.0"

__all__ = ["ABSTAIN", "EXTENSION_STATUS", "philox4x32", "Certificate", "Prediction", "certify", "certify_from_counts", "predict",
           "predict_from_counts", "__version__"]
