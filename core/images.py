"""Image reading and the Patch SVDD input normalisation (subtract the training mean, divide by 255)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sclvi.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_rgb(path: str | Path, size: int | None) -> np.ndarray:
    """An image file as (size, size, 3) uint8, or at its own size when `size` is None: any mode (gray,
    RGBA, 16-bit) accepted."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb_array(im, size)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc} (is it a valid image file?)") from None


def to_rgb_array(im: Image.Image, size: int | None) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray((arr * (255.0 / max(arr.max(), 1.0))).astype(np.uint8))
    im = im.convert("RGB")  # grayscale is repeated to 3 channels, alpha dropped
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def read_mask(path: str | Path, size: int | None) -> np.ndarray:
    """A ground-truth mask as (size, size) bool, or at its own size when `size` is None (nearest-neighbour
    resize keeps it binary).

    Masks come in several conventions and each must read right, not as "no defect": 0/255 gray (MVTec AD),
    0/1 labels (VisA as shipped), a colour on black (any channel counts), a palette image (any index but 0)."""
    try:
        with Image.open(path) as im:
            if im.mode == "P":
                labels = np.asarray(im) != 0
            else:
                level = np.asarray(im.convert("RGB")).max(axis=2)
                labels = level > (0 if level.max() <= 1 else 127)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from None
    if size is not None and labels.shape != (size, size):
        labels = np.asarray(Image.fromarray(labels).resize((size, size), Image.NEAREST))
    return labels


def check_frame(frame: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Validate an in-memory model input (H, W, 3) uint8 at the configured (height, width) (an int: square);
    gray (H, W) is expanded."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise DataError(f"expected an (H, W, 3) or (H, W) image, got shape {frame.shape}")
    if frame.shape[:2] != hw:
        raise DataError(
            f"image is {frame.shape[1]}x{frame.shape[0]} but the model input is {hw[1]}x{hw[0]}: map camera frames "
            "with FrameMapping.to_input (roi + scale), or retrain with another geometry"
        )
    return frame


#: Gray-level mean and spread every frame is mapped to under `preprocess.photometric: frame`.
FRAME_MEAN, FRAME_STD = 128.0, 48.0


def photometric(frame: np.ndarray, mode: str = "none") -> np.ndarray:
    """(H, W, 3) uint8 -> float32 gray levels; `frame` maps the frame's own mean and standard deviation (all
    channels together, so colour is kept) to FRAME_MEAN / FRAME_STD. A flat frame (std < 1 gray level) is
    only shifted: dividing by its noise would turn a blank frame into a loud one."""
    f = frame.astype(np.float32)
    if mode == "none":
        return f
    if mode != "frame":
        raise ValueError(f"unknown photometric mode {mode!r}")
    mu, sd = float(f.mean()), float(f.std())
    return (f - mu) * np.float32(FRAME_STD / max(sd, 1.0)) + np.float32(FRAME_MEAN)


def mean_image(frames: np.ndarray, mode: str = "none", kind: str = "image") -> np.ndarray:
    """Mean of the training inputs after `photometric(mode)`, (H, W, 3) float32: per pixel (`image`), or the
    per-channel mean gray level repeated over the frame (`flat`: the same file and shape, so nothing
    downstream changes)."""
    if kind not in ("image", "flat"):
        raise ValueError(f"unknown mean kind {kind!r}")
    acc = np.zeros(frames.shape[1:], dtype=np.float64)
    for f in frames:
        acc += photometric(f, mode)
    mean = acc / max(1, len(frames))
    if kind == "flat":
        mean = np.broadcast_to(mean.mean(axis=(0, 1)), mean.shape)
    return np.ascontiguousarray(mean, dtype=np.float32)


def normalise(frame: np.ndarray, mean: np.ndarray, mode: str = "none") -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32: (photometric(x) - mean) / 255, as Patch SVDD feeds its encoder."""
    return np.ascontiguousarray(((photometric(frame, mode) - mean) / 255.0).transpose(2, 0, 1))
