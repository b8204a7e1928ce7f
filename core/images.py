"""Image reading and the Patch SVDD input normalisation (subtract the training mean, divide by 255)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sclvi.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_rgb(path: str | Path, size: int) -> np.ndarray:
    """An image file as (size, size, 3) uint8: any mode (gray, RGBA, 16-bit) and size accepted."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb_array(im, size)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc} (is it a valid image file?)") from None


def to_rgb_array(im: Image.Image, size: int) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray((arr * (255.0 / max(arr.max(), 1.0))).astype(np.uint8))
    im = im.convert("RGB")  # grayscale is repeated to 3 channels, alpha dropped
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def read_mask(path: str | Path, size: int) -> np.ndarray:
    """A ground-truth mask as (size, size) bool (nearest-neighbour resize keeps it binary)."""
    try:
        with Image.open(path) as im:
            m = im.convert("L")
            if m.size != (size, size):
                m = m.resize((size, size), Image.NEAREST)
            return np.asarray(m) > 127
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from None


def check_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """Validate an in-memory frame (H, W, 3) uint8 at the configured size; gray (H, W) is expanded."""
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise DataError(f"expected an (H, W, 3) or (H, W) image, got shape {frame.shape}")
    if frame.shape[:2] != (size, size):
        raise DataError(
            f"image is {frame.shape[1]}x{frame.shape[0]} but the model expects {size}x{size}: "
            "resize it first (read_rgb does) or retrain with geometry.image_size"
        )
    return frame


def mean_image(frames: np.ndarray) -> np.ndarray:
    """Per-pixel mean of the training frames, (S, S, 3) float32 in 0..255."""
    return frames.astype(np.float64).mean(axis=0).astype(np.float32)


def normalise(frame: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 -> (3, S, S) float32: (x - mean) / 255, as Patch SVDD feeds its encoder."""
    return np.ascontiguousarray(((frame.astype(np.float32) - mean) / 255.0).transpose(2, 0, 1))
