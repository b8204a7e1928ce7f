"""Camera frame <-> model input: cut the taught region of interest out at native resolution, scale it with
its aspect kept, and map map pixels and defect boxes back to camera pixels.

Two modes, both from `GeometryConfig`: `frame` unset is the paper's protocol (any frame squashed to a
square); `frame` set inspects `roi` x `scale` and refuses frames of another size (a camera whose ROI or
binning was changed must not be judged through a stretched picture).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sclvi.config import GeometryConfig
from sclvi.errors import DataError
from sclvi.images import read_mask, read_rgb


@dataclass(frozen=True)
class FrameMapping:
    frame: tuple[int, int] | None  # (width, height) the camera must deliver; None: any, squashed
    roi: tuple[int, int, int, int] | None  # (x, y, width, height) in frame pixels; None with frame None
    input_hw: tuple[int, int]  # (height, width) of the model input

    @classmethod
    def from_config(cls, geometry: GeometryConfig) -> "FrameMapping":
        return cls(geometry.frame, geometry.region, geometry.input_hw)

    def region(self, frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """The inspected rectangle (x, y, width, height) of a frame of this (height, width)."""
        return self.roi if self.roi is not None else (0, 0, frame_hw[1], frame_hw[0])

    def check(self, frame_hw: tuple[int, int], what: str = "frame") -> None:
        """DataError when a frame cannot be inspected with this geometry (wrong size: never resized)."""
        if self.frame is not None and (frame_hw[1], frame_hw[0]) != self.frame:
            raise DataError(
                f"{what} is {frame_hw[1]}x{frame_hw[0]} but the model was trained on {self.frame[0]}x{self.frame[1]} "
                "camera frames (geometry.frame): restore the camera's ROI / binning, or retrain on frames of this size")

    def to_input(self, frame: np.ndarray, what: str = "frame") -> np.ndarray:
        """(H, W, 3) uint8 camera frame -> (h, w, 3) uint8 model input (roi cut, scaled; a gray (H, W) frame stays
        gray: `check_frame` expands it, as for any input)."""
        self.check(frame.shape[:2], what)
        x, y, w, h = self.region(frame.shape[:2])
        crop = frame[y : y + h, x : x + w]
        return _resize(crop, self.input_hw, Image.BILINEAR)

    def mask_to_input(self, mask: np.ndarray, what: str = "mask") -> np.ndarray:
        """A (H, W) bool ground-truth mask of a camera frame -> (h, w) bool on the model input (nearest
        neighbour: stays binary, lines up with `to_input`)."""
        self.check(mask.shape[:2], what)
        x, y, w, h = self.region(mask.shape[:2])
        crop = (mask[y : y + h, x : x + w] > 0).astype(np.uint8) * 255
        return _resize(crop, self.input_hw, Image.NEAREST) > 127

    def box_to_camera(self, box: tuple[float, float, float, float], frame_hw: tuple[int, int]) -> list[int]:
        """[x0, y0, x1, y1] in model-input pixels (x1, y1 exclusive) -> the same box in camera pixels,
        rounded outwards so the camera box always covers what the model marked."""
        x, y, w, h = self.region(frame_hw)
        sx, sy = w / self.input_hw[1], h / self.input_hw[0]
        return [int(np.floor(x + box[0] * sx)), int(np.floor(y + box[1] * sy)),
                int(np.ceil(x + box[2] * sx)), int(np.ceil(y + box[3] * sy))]

    def pixel_area(self, frame_hw: tuple[int, int]) -> float:
        """Camera pixels per model-input pixel."""
        _, _, w, h = self.region(frame_hw)
        return (w / self.input_hw[1]) * (h / self.input_hw[0])

    def to_camera_map(self, anomaly_map: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
        """The (h, w) input map placed on a (H, W) camera frame: resized into the roi, 0 outside it."""
        x, y, w, h = self.region(frame_hw)
        out = np.zeros(frame_hw, dtype=np.float32)
        out[y : y + h, x : x + w] = np.asarray(
            Image.fromarray(anomaly_map.astype(np.float32)).resize((w, h), Image.BILINEAR))
        return out


def _resize(img: np.ndarray, hw: tuple[int, int], method: int) -> np.ndarray:
    if img.shape[:2] == hw:
        return np.ascontiguousarray(img)
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), method))


def read_input(path: str | Path, geometry: GeometryConfig) -> np.ndarray:
    """An image file as the model input of this geometry ((h, w, 3) uint8)."""
    mapping = FrameMapping.from_config(geometry)
    if mapping.frame is None:
        return read_rgb(path, geometry.image_size)
    return mapping.to_input(read_rgb(path, None), what=f"image {path}")


def read_input_mask(path: str | Path, geometry: GeometryConfig) -> np.ndarray:
    """A ground-truth mask file mapped exactly like its image ((h, w) bool)."""
    mapping = FrameMapping.from_config(geometry)
    if mapping.frame is None:
        return read_mask(path, geometry.image_size)
    return mapping.mask_to_input(read_mask(path, None), what=f"mask {path}")


def image_sizes(images: list[Path]) -> dict[tuple[int, int], Path]:
    """Each distinct (width, height) among the images, with the first image of that size (headers only)."""
    sizes: dict[tuple[int, int], Path] = {}
    for p in images:
        try:
            with Image.open(p) as im:
                sizes.setdefault(im.size, p)
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"cannot read image {p}: {exc}") from None
    return sizes


def frame_size_of(images: list[Path]) -> tuple[int, int]:
    """The (width, height) every image shares; a DataError naming the sizes otherwise: a native-resolution
    model inspects one camera geometry."""
    sizes = image_sizes(images)
    if len(sizes) != 1:
        listed = ", ".join(f"{w}x{h} (e.g. {p.name})" for (w, h), p in list(sizes.items())[:4])
        raise DataError(f"the images differ in size ({listed}): an roi / scale needs one frame size; crop them "
                        "alike first, or train without --roi/--scale (frames are then resized to a square)")
    return next(iter(sizes))
