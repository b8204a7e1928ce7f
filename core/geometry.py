"""Patch geometry: where the strided patches of both scales sit and how they relate.

The 64-px patches are never embedded from pixels at inference: each one's four 32-px quarters are
already on the 32-px stride grid, so the large scale is a gather of small-scale codes followed by
the secondary encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from sclvi.config import GeometryConfig


@dataclass(frozen=True)
class PatchGrid:
    """Square patches of side `patch` placed every `stride` pixels over a `height` x `width` input."""

    height: int
    width: int
    patch: int
    stride: int

    @property
    def rows(self) -> int:
        return (self.height - self.patch) // self.stride + 1

    @property
    def cols(self) -> int:
        return (self.width - self.patch) // self.stride + 1

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of patches."""
        return self.rows, self.cols

    @property
    def count(self) -> int:
        return self.rows * self.cols

    def offsets(self, axis: int = 0) -> np.ndarray:
        """Top-left pixel coordinate of the patches along one axis (0: rows, 1: columns)."""
        return np.arange(self.shape[axis]) * self.stride

    def patches(self, image: np.ndarray) -> np.ndarray:
        """A zero-copy (rows, cols, C, patch, patch) view of all patches of a (C, H, W) image."""
        if image.ndim != 3 or image.shape[1:] != (self.height, self.width):
            raise ValueError(f"expected a (C, {self.height}, {self.width}) image, got {image.shape}")
        windows = np.lib.stride_tricks.sliding_window_view(image, (self.patch, self.patch), axis=(1, 2))
        # windows: (C, H-p+1, W-p+1, p, p) -> keep strided positions, put the channel axis after them
        windows = windows[:, :: self.stride, :: self.stride]
        return windows.transpose(1, 2, 0, 3, 4)

    @cached_property
    def coverage(self) -> np.ndarray:
        """How many patches cover each pixel (the denominator of the pixel score), computed once."""
        cover = self.spread(np.ones(self.shape))
        cover.flags.writeable = False
        return cover

    def spread(self, scores: np.ndarray) -> np.ndarray:
        """Sum, for each pixel, the scores of the patches covering it (an (H, W) float64 map).

        Box-sum via a 2-D prefix sum of corner impulses: O(H W) whatever the patch count.
        """
        if scores.shape != self.shape:
            raise ValueError(f"expected a {self.shape} score grid, got {scores.shape}")
        h, w, p = self.height, self.width, self.patch
        impulses = np.zeros((h + 1, w + 1), dtype=np.float64)
        y0, x0 = np.meshgrid(self.offsets(0), self.offsets(1), indexing="ij")
        v = scores.astype(np.float64)
        np.add.at(impulses, (y0, x0), v)
        np.add.at(impulses, (y0, x0 + p), -v)
        np.add.at(impulses, (y0 + p, x0), -v)
        np.add.at(impulses, (y0 + p, x0 + p), v)
        return impulses.cumsum(0).cumsum(1)[:h, :w]


@dataclass(frozen=True)
class TwoScaleGeometry:
    """The small (main encoder) grid, the large grid, and the quarter gather between them."""

    small: PatchGrid
    large: PatchGrid

    @classmethod
    def from_config(cls, geometry: GeometryConfig) -> "TwoScaleGeometry":
        h, w = geometry.input_hw
        return cls(
            small=PatchGrid(h, w, geometry.small_patch, geometry.small_stride),
            large=PatchGrid(h, w, geometry.large_patch, geometry.large_stride),
        )

    def quarter_index(self) -> np.ndarray:
        """(large.count, 2, 2) flat indices into the small grid of each large patch's quarters.

        Entry [k, a, b] is the small patch at row offset a*32, column offset b*32 of large patch k,
        matching the (D, 2, 2) layout the secondary encoder is trained on.
        """
        step = self.small.stride
        half = self.small.patch
        oy, ox = self.large.offsets(0), self.large.offsets(1)
        rows = (oy[:, None, None, None] + half * np.arange(2)[None, None, :, None]) // step
        cols = (ox[None, :, None, None] + half * np.arange(2)[None, None, None, :]) // step
        flat = rows * self.small.cols + cols  # (rows, cols, 2, 2) via broadcasting
        return flat.reshape(self.large.count, 2, 2)
