"""Load users' and bundled torch models: segmenter and diffusers denoiser -> DenoiseSegment.

The segmenter routes (ONNX, TorchScript, factory + weights) each have a module in ``export/intake/``;
``load_source`` picks one.  A model directory (the bundled layout, see ``certseg_rt.zoo``) holds ``segmenter.json``
(``factory`` "package.module:callable", its ``kwargs``, ``classes``, ``input``),
``segmenter.safetensors``, and optionally ``denoiser/`` with diffusers' ``unet/`` and ``scheduler/``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..adapters import Replicate, adapter_for
from ..diffusion import OneStepDenoise, timestep_for_sigma
from ..errors import CertsegError
from .denoise_segment import DenoiseSegment, OneStepDenoiser
from .denoisers import DenoiserSpec, denoiser_spec, load_denoiser, size_multiple_with
from .intake.factory import (
    TORCH_SUFFIXES,
    build_from_factory,
    factory_file,
    is_factory_spec,
    load_factory,
    load_weights_into,
)
from .intake.probe import first_conv_in_channels, probe_segmenter
from .intake.torchscript import load_torchscript


@dataclass
class SourceModel:
    segmenter: torch.nn.Module
    classes: list[str]
    channels: int
    height: int  # the resolution the model was trained at (the radius is stated at this resolution)
    width: int
    size_multiple: int
    unet: torch.nn.Module | None = None
    scheduler: object | None = None  # diffusers DDPMScheduler
    files: dict[str, Path] = field(default_factory=dict)  # every file that defines the model, for hashing
    segmenter_onnx: Path | None = None  # a user's ONNX segmenter (then `segmenter` is None: torch cannot run it)
    segmenter_file: Path | None = None  # the file the user gave for the segmenter (named in messages)
    intake: dict = field(default_factory=dict)  # how the model was brought in (for the manifest)
    modality: str | None = None  # the phantom modality it was trained on (data.modalities), if any
    notes: list[str] = field(default_factory=list)  # remarks for stderr that change nothing certified

    def phantom(self, seed: int):
        """A phantom of the model's modality at its input size (image (C, H, W), mask): parity, calibration
        and demo images."""
        from ..data import Phantom
        from ..data.modalities import modality_for

        ph = modality_for(self.channels, self.modality).make_phantom(seed, max(self.height, self.width))
        image = ph.image[:, :self.height, :self.width]
        if image.shape[0] != self.channels:  # a user's model with an unusual channel count
            image = np.repeat(image[:1], self.channels, axis=0)
        return Phantom(np.ascontiguousarray(image), np.ascontiguousarray(ph.mask[:self.height, :self.width]), seed)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def denoiser_spec(self) -> DenoiserSpec | None:
        return None if self.unet is None else denoiser_spec(self.unet, self.scheduler)

    @property
    def noise_channels(self) -> int:
        """The channels of the space the noise is added in (the fused graph's input): the denoiser's."""
        spec = self.denoiser_spec
        return self.channels if spec is None else spec.channels

    @property
    def adapter(self) -> Replicate | None:
        """The map from the image (`channels`) to the noise space (`noise_channels`), if they differ."""
        return adapter_for(self.channels, self.noise_channels if self.unet is not None else None, self.channels)

    def one_step(self, sigma: float) -> OneStepDenoise | None:
        if self.scheduler is None:
            return None
        return timestep_for_sigma(self.scheduler.alphas_cumprod.numpy(), sigma,
                                  prediction_type=self.denoiser_spec.prediction_type)

    def one_step_denoiser(self, sigma: float) -> OneStepDenoiser | None:
        """x_noisy (noise space) -> denoised x as the segmenter takes it."""
        step = self.one_step(sigma)
        return None if step is None else OneStepDenoiser(self.unet, step, average_channels=self.adapter is not None)

    def check_channels(self, segmenter_channels: int | None = None) -> Replicate | None:
        """Images, denoiser and segmenter channels, compared before any export: the adapter, or one line."""
        return adapter_for(self.channels, None if self.unet is None else self.noise_channels, segmenter_channels)

    def denoise_segment(self, sigma: float, output: str = "labels") -> DenoiseSegment:
        if self.segmenter is None:
            raise CertsegError("the segmenter is an ONNX file, which torch cannot run: build an engine "
                               "(certseg-rt build-engine --segmenter FILE.onnx) and certify with --engine")
        return DenoiseSegment(self.segmenter, self.one_step_denoiser(sigma), output=output).eval()


def load_safetensors_into(module: torch.nn.Module, weights: Path) -> torch.nn.Module:
    """Load a weights file (safetensors or a torch state dict) into `module`, strictly."""
    return load_weights_into(module, Path(weights), "the segmenter architecture")[0]


def load_model_dir(path: Path, denoiser: bool = True) -> SourceModel:
    path = Path(path)
    config_path = path / "segmenter.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise CertsegError(f"{path} is not a model directory: it has no segmenter.json")
    except json.JSONDecodeError as e:
        raise CertsegError(f"{config_path} is not valid JSON ({e})")
    kwargs = config.get("kwargs", {})
    segmenter = build_from_factory(config["factory"], kwargs)
    weights = path / "segmenter.safetensors"
    load_safetensors_into(segmenter, weights)
    inp = config["input"]
    model = SourceModel(segmenter=segmenter.eval(), classes=list(config["classes"]), channels=int(inp["channels"]),
                        height=int(inp["height"]), width=int(inp["width"]),
                        size_multiple=int(inp.get("size_multiple", 1)),
                        modality=config.get("modality"),
                        files={"segmenter.json": config_path, "segmenter.safetensors": weights},
                        intake={"model_dir": path.name, "segmenter": f"factory {config['factory']}", "kwargs": kwargs})
    if denoiser and (path / "denoiser").is_dir():
        model.unet, model.scheduler, files = load_denoiser(path / "denoiser")
        model.files.update(files)
        model.size_multiple = size_multiple_with(model.size_multiple, model.denoiser_spec)
        model.check_channels()
    return model


def load_source(model_dir: Path, *, segmenter: str | None = None, weights: Path | None = None,
                kwargs: dict | None = None, classes: list[str] | None = None, image_size: tuple[int, int] | None = None,
                denoiser: str | None = None) -> SourceModel:
    """Model intake for export: a model directory, with any part replaced by the user's own.

    segmenter: an ONNX file, a TorchScript file, or a factory, 'package.module:factory' or
    'path/to/models.py:factory' (that file alone, no package __init__) (with `weights`, safetensors
    or a torch state dict, and `kwargs`).  denoiser: a diffusers directory, or 'none' for plain randomized
    smoothing.  classes / image_size override the model directory's.
    """
    source = load_model_dir(model_dir, denoiser=denoiser is None)
    onnx_file = None
    segmenter_channels = None  # the model directory's own segmenter takes its images' channels
    if segmenter is not None:
        module, files, onnx_file = _segmenter_route(source, segmenter, weights, kwargs)
        source.segmenter = module
        segmenter_channels = onnx_file.channels if onnx_file is not None else \
            module_in_channels(module, source.channels, source.height, source.width)
        source.files = {k: v for k, v in source.files.items() if not k.startswith("segmenter")} | files
    elif weights is not None or kwargs:
        raise CertsegError("--segmenter-weights and --segmenter-kwargs are for a factory segmenter: add "
                           "--segmenter package.module:factory")
    if denoiser is not None and denoiser.lower() != "none":
        source.unet, source.scheduler, files = load_denoiser(Path(denoiser))
        source.intake["denoiser"] = "diffusers directory"
        source.files = {k: v for k, v in source.files.items() if not k.startswith("denoiser/")} | files
        source.size_multiple = size_multiple_with(source.size_multiple, source.denoiser_spec)
    source.check_channels(segmenter_channels)  # before any export: one line naming all three counts
    if classes is not None:
        source.classes = list(classes)
    if image_size is not None:
        source.height, source.width = image_size
    for side in (source.height, source.width):
        if side % source.size_multiple:
            m = source.size_multiple
            raise CertsegError(f"image size {source.height}x{source.width} must be a multiple of {m} for this model "
                               f"(its segmenter's and denoiser's downsampling); choose --image-size "
                               f"{-(-source.height // m) * m}x{-(-source.width // m) * m}")
    from ..limits import check_image_size

    check_image_size(source.height, source.width, what="--image-size", fix="choose a smaller --image-size")
    if source.unet is not None:
        source.notes += [n for n in denoiser_notes(source) if n not in source.notes]
    if onnx_file is not None:
        _check_onnx_segmenter(source, onnx_file)
    elif source.segmenter is not None:  # the class names must match what the segmenter outputs
        got = probe_segmenter(source.segmenter, source.channels, source.height, source.width,
                              what=f"the segmenter {source.segmenter_file or segmenter or 'of ' + str(model_dir)}")
        if got != len(source.classes):
            raise CertsegError(f"the segmenter outputs {got} classes but {len(source.classes)} class names are "
                               f"given; pass --classes with {got} names")
    return source


def _segmenter_route(source: SourceModel, segmenter: str, weights: Path | None, kwargs: dict | None):
    """(torch module or None, files to hash, ONNX file or None) for --segmenter; records the route in intake."""
    path = Path(segmenter)
    if path.suffix.lower() == ".onnx":
        from .intake.onnx_file import load_onnx_segmenter

        onnx_file = load_onnx_segmenter(path)
        source.segmenter_onnx = source.segmenter_file = path
        source.intake = {"segmenter": "onnx", "opset": onnx_file.opset, "external_data": onnx_file.external_files,
                         "batch": onnx_file.batch or "dynamic"}
        files = {"segmenter.onnx": path} | {f"segmenter.onnx:{n}": path.parent / n for n in onnx_file.external_files}
        module = None
    elif is_factory_spec(segmenter) and not path.is_file():
        load_factory(segmenter)  # importable first: that is the first thing to fix
        if weights is None:
            raise CertsegError(f"--segmenter {segmenter} is a factory: give its weights with --segmenter-weights "
                               f"(safetensors, or a torch state dict {'/'.join(TORCH_SUFFIXES)})")
        module = build_from_factory(segmenter, kwargs)
        module, layout = load_weights_into(module, Path(weights), f"the segmenter {segmenter}(**{kwargs or {}})")
        module, onnx_file = module.eval(), None
        suffix = Path(weights).suffix.lower()
        files = {"segmenter.safetensors" if suffix == ".safetensors" else f"segmenter{suffix}": Path(weights)}
        if factory_file(segmenter) is not None:  # the architecture's source is part of what is certified
            files["segmenter.py"] = factory_file(segmenter)
        source.intake = {"segmenter": f"factory {segmenter}", "kwargs": kwargs or {}, "weights": layout}
    elif path.is_file():
        if weights is not None or kwargs:
            raise CertsegError(f"--segmenter {path} is a file; --segmenter-weights and --segmenter-kwargs are for a "
                               f"factory (--segmenter package.module:factory)")
        module, onnx_file = load_torchscript(path), None
        source.segmenter_file = path
        files = {"segmenter.torchscript": path}
        source.intake = {"segmenter": "torchscript"}
    elif path.suffix:
        raise CertsegError(f"--segmenter {segmenter} does not exist")
    else:
        raise CertsegError(f"--segmenter {segmenter} is neither a file nor a factory ('package.module:factory' or "
                           f"'path/to/models.py:factory')")
    return module, files, onnx_file


def _check_onnx_segmenter(source: SourceModel, seg) -> None:
    """What the ONNX graph declares against the engine being built: classes, a fixed image size (its channels
    are compared with the images' and the denoiser's in SourceModel.check_channels)."""
    name = seg.path
    if seg.classes is not None and seg.classes != len(source.classes):
        raise CertsegError(f"ONNX segmenter {name} outputs {seg.classes} classes but {len(source.classes)} class "
                           f"names are given; pass --classes with {seg.classes} names")
    if seg.fixed_size is not None and seg.fixed_size != (source.height, source.width):
        h, w = seg.fixed_size
        raise CertsegError(f"ONNX segmenter {name} takes {h}x{w} images (fixed in the graph), but the engine is "
                           f"built for {source.height}x{source.width}; pass --image-size {h}x{w}, or export it "
                           f"with dynamic height and width")


def module_in_channels(module: torch.nn.Module | None, channels: int, height: int, width: int) -> int | None:
    """The input channels of a torch segmenter, read off its first 4-D weight (a Conv2d's (out, in, kh, kw));
    when that is not the images' `channels`, a run on them decides (a grouped first convolution reads
    fewer).  None: not known."""
    first = first_conv_in_channels(module) if module is not None else None
    if first is None or first == channels:
        return first
    try:
        with torch.inference_mode():
            module(torch.zeros(1, channels, height, width))
        return channels
    except Exception:  # any error of the user's module: its weight says what it takes
        return first


def denoiser_notes(source: SourceModel) -> list[str]:
    """Lines for stderr about a denoiser that builds but differs from what it was made for."""
    spec, config = source.denoiser_spec, source.scheduler.config
    notes = [n for n in [spec.size_note(source.height, source.width)] if n]
    if config.get("thresholding") or not config.get("clip_sample", True) or config.get("clip_sample_range", 1.0) != 1:
        notes.append(f"the scheduler's x0 handling (clip_sample {config.get('clip_sample')}, clip_sample_range "
                     f"{config.get('clip_sample_range')}, thresholding {config.get('thresholding')}) is not "
                     f"applied: the one-step x0 is clipped to [-1, 1], the segmenter's [0, 1] input range")
    return notes
