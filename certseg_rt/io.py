"""Images in, masks and certificates out.  Every write is atomic: a temporary file, then a rename."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)

from .errors import CertsegError, InputError
from .limits import MAX_PIXELS, check_image_size
from .medical_io import is_medical, read_medical_image

# Colours of the overlay: one per class (background transparent), abstained pixels magenta.
CLASS_COLOURS = np.array([[0, 0, 0], [46, 134, 222], [39, 174, 96], [231, 76, 60],
                          [241, 196, 15], [155, 89, 182], [26, 188, 156], [230, 126, 34]], np.uint8)
ABSTAIN_COLOUR = np.array([255, 0, 255], np.uint8)


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure remove it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CertsegError(f"cannot write to {path.parent}: {e.strerror}; choose a writable output path")
    try:  # from here on an interrupt (Ctrl-C) leaves no temporary file behind
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; results are ordinary files
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        except OSError as e:  # a full disk, or `path` is a directory
            raise CertsegError(f"cannot write {path}: {e.strerror or e}; free space or choose another output path")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def staged_files(out: Path, replaces: tuple[str, ...] = ()):
    """Yield an empty staging folder beside `out`; on success its files move into `out` (created if needed,
    files of the same names replaced, and those named in `replaces` that the stage lacks removed, so no stale
    file of an earlier run stays); on failure or interrupt it is removed and `out` is as it was."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CertsegError(f"--out {out} exists and is not a directory; choose another path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    except OSError as e:
        raise CertsegError(f"cannot write to {out.parent}: {e.strerror}; choose a writable --out")
    try:
        yield stage
        try:
            out.mkdir(exist_ok=True)
            for name in replaces:
                if not (stage / name).exists() and (out / name).is_file():
                    (out / name).unlink()
            for file in sorted(stage.iterdir()):
                os.chmod(file, 0o666 & ~_UMASK)
                os.replace(file, out / file.name)
        except OSError as e:
            raise CertsegError(f"cannot write to {out}: {e.strerror or e}; free space or choose another --out")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_mask(path: Path, labels: np.ndarray) -> None:
    """Certified mask as an 8-bit PNG: class index per pixel, 255 = abstain."""
    write_png(path, np.asarray(labels, np.uint8))


def _to_unit_range(a: np.ndarray, mode: str, path: Path) -> np.ndarray:
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16 or mode.startswith("I;16"):
        return a.astype(np.float32) / 65535.0
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise InputError(f"{path} contains NaN or Inf values; clean the image before certifying")
        if a.min() < 0.0 or a.max() > 1.0:
            raise InputError(f"{path} has float values in [{a.min():.3g}, {a.max():.3g}]; the model takes "
                             f"[0, 1]: rescale the image")
        return a
    raise InputError(f"{path} has pixel type {a.dtype} (mode {mode}); give 8- or 16-bit integers or floats in [0, 1]")


def read_image(path: Path, channels: int = 1, note=None) -> np.ndarray:
    """An image file -> float32 (channels, H, W) in [0, 1].

    PNG, JPEG, TIFF (8/16-bit or float) and .npy ((H, W) or (C, H, W)); NIfTI (.nii, .nii.gz) and DICOM
    (.dcm) slices through medical_io, min-max normalised.  An RGB file whose three channels are equal is
    grayscale; a colour image given to a one-channel model is an error, and so is a grayscale image given
    to a three-channel one.  RGBA / LA files lose their alpha channel (`note` is told, if given); other
    4-channel arrays are refused.  16-bit colour is refused: the colour models are 8-bit RGB models, and
    Pillow would silently keep only the high byte of a 48-bit PNG.  16-bit grayscale is taken (X-rays).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist (or is not a file)")
    mode = "npy"
    if is_medical(path):
        a, mode = read_medical_image(path), "float"  # (H, W) or (H, W, 3), min-max normalised to [0, 1]
    elif path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False, mmap_mode="r")  # the header first: no pixels read yet
        except (ValueError, OSError, EOFError) as e:
            reason = "it holds Python objects, and certseg-rt never unpickles" if "Python objects" in str(e) else e
            raise InputError(f"cannot read {path} as a numpy array ({reason}); save it with numpy.save")
        if a.size > 4 * MAX_PIXELS:
            raise InputError(f"image {path} has shape {a.shape} ({a.size / 1e6:.0f} million values); certseg-rt "
                             f"takes images up to {MAX_PIXELS / 1e6:.1f} megapixels: downsample it")
        if a.ndim == 3:
            a = np.moveaxis(a, 0, -1) if a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4) else a
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                check_image_size(im.height, im.width, what=f"image {path}")  # before decoding the pixels
                # The decoder's raw mode says what the file holds: Pillow decodes 48/64-bit colour PNGs to
                # 8-bit RGB(A) by dropping the low byte, so their mode alone does not tell.
                raw_modes = [str(t[3][0] if isinstance(t[3], tuple) else t[3]) for t in im.tile or ()]
                sixteen_bit_colour = im.mode in ("RGB", "RGBA") and any(";16" in r for r in raw_modes)
                im.load()
                mode = im.mode
                if sixteen_bit_colour:
                    raise InputError(f"{path} is a 16-bit-per-channel colour image; certseg-rt reads colour "
                                     f"images as 8-bit RGB: convert it to 8 bits per channel first")
                if mode in ("CMYK", "YCbCr", "LAB", "HSV"):  # colour spaces that are not RGB channels
                    im = im.convert("RGB")
                    mode = im.mode
                if mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                    mode = im.mode
                a = np.asarray(im)
        except Image.DecompressionBombError:
            raise InputError(f"image {path} is larger than {MAX_PIXELS / 1e6:.1f} megapixels; downsample it to the "
                             f"model's input size")
        except InputError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise InputError(f"cannot read image {path}: {e} (truncated or not an image); give a PNG, JPEG or TIFF")
    if a.ndim == 3 and a.shape[-1] in (2, 4):
        if mode not in ("RGBA", "LA", "PA", "RGBa", "La"):
            raise InputError(f"image {path} has {a.shape[-1]} channels; certseg-rt takes 1 "
                             f"(grayscale) or 3 (RGB), and a 4th only as the alpha of an RGBA PNG: keep the "
                             f"channels the model was trained on")
        a = a[..., :-1]
        if note is not None:
            note(f"{path.name}: alpha channel dropped (the model sees {'RGB' if a.shape[-1] == 3 else 'gray'})")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise InputError(f"image {path} has shape {a.shape}; expected (H, W), (H, W, 3) or (C, H, W)")
    if a.shape[-1] == 3 and channels == 1:
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            raise InputError(f"{path} is a colour image but the model takes 1 channel; convert it to grayscale "
                             f"(e.g. PIL's .convert('L')) or use a 3-channel model")
        a = a[..., :1]
    elif a.shape[-1] == 1 and channels == 3:
        raise InputError(f"{path} is grayscale but the model takes 3 channels (RGB); give a colour image "
                         f"or use a 1-channel model")
    if a.shape[-1] == 3 and (a.dtype == np.uint16 or mode.startswith("I;16")):
        raise InputError(f"{path} is a 16-bit colour image; the colour models take 8-bit RGB: convert it to "
                         f"8 bits per channel first")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"image {path} is empty")
    check_image_size(a.shape[0], a.shape[1], what=f"image {path}")
    return np.ascontiguousarray(np.moveaxis(_to_unit_range(a, mode, path), -1, 0))


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture: the image (gray or colour), certified classes tinted, abstained pixels magenta."""
    x = np.clip(np.asarray(image, np.float32), 0, 1) * 255
    if x.ndim == 3 and x.shape[0] == 3:
        rgb = np.moveaxis(x, 0, -1)
    else:
        rgb = np.repeat((x.mean(axis=0) if x.ndim == 3 else x)[..., None], 3, axis=-1)
    labels = np.asarray(labels)
    colours = np.zeros((256, 3), np.float32)
    colours[:len(CLASS_COLOURS)] = CLASS_COLOURS
    colours[255] = ABSTAIN_COLOUR
    tint = colours[labels]
    painted = (labels != 0)[..., None]
    out = np.where(painted, (1 - alpha) * rgb + alpha * tint, rgb)
    out[labels == 255] = ABSTAIN_COLOUR  # abstentions fully marked: they carry no claim
    return out.astype(np.uint8)
