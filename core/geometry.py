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
    """Square patches of side `patch` placed every `stride` pixels over a square image."""

    image_size: int
    patch: int
    stride: int

    @property
    def n(self) -> int:
        """Patches per axis."""
        return (self.image_size - self.patch) // self.stride + 1

    @property
    def count(self) -> int:
        return self.n * self.n

    def offsets(self) -> np.ndarray:
        """Top-left pixel coordinate of the patches along one axis."""
        return np.arange(self.n) * self.stride

    def patches(self, image: np.ndarray) -> np.ndarray:
        """A zero-copy (n, n, C, patch, patch) view of all patches of a (C, H, W) image."""
        if image.ndim != 3 or image.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(f"expected a (C, {self.image_size}, {self.image_size}) image, got {image.shape}")
        windows = np.lib.stride_tricks.sliding_window_view(image, (self.patch, self.patch), axis=(1, 2))
        # windows: (C, H-p+1, W-p+1, p, p) -> keep strided positions, put the channel axis after them
        windows = windows[:, :: self.stride, :: self.stride]
        return windows.transpose(1, 2, 0, 3, 4)

    @cached_property
    def coverage(self) -> np.ndarray:
        """How many patches cover each pixel (the denominator of the pixel score), computed once."""
        cover = self.spread(np.ones((self.n, self.n)))
        cover.flags.writeable = False
        return cover

    def spread(self, scores: np.ndarray) -> np.ndarray:
        """Sum, for each pixel, the scores of the patches covering it (an (S, S) float64 map).

        Box-sum via a 2-D prefix sum of corner impulses: O(S^2) whatever the patch count.
        """
        if scores.shape != (self.n, self.n):
            raise ValueError(f"expected a ({self.n}, {self.n}) score grid, got {scores.shape}")
        s, p = self.image_size, self.patch
        impulses = np.zeros((s + 1, s + 1), dtype=np.float64)
        o = self.offsets()
        y0, x0 = np.meshgrid(o, o, indexing="ij")
        v = scores.astype(np.float64)
        np.add.at(impulses, (y0, x0), v)
        np.add.at(impulses, (y0, x0 + p), -v)
        np.add.at(impulses, (y0 + p, x0), -v)
        np.add.at(impulses, (y0 + p, x0 + p), v)
        return impulses.cumsum(0).cumsum(1)[:s, :s]


@dataclass(frozen=True)
class TwoScaleGeometry:
    """The small (main encoder) grid, the large grid, and the quarter gather between them."""

    small: PatchGrid
    large: PatchGrid

    @classmethod
    def from_config(cls, geometry: GeometryConfig) -> "TwoScaleGeometry":
        return cls(
            small=PatchGrid(geometry.image_size, geometry.small_patch, geometry.small_stride),
            large=PatchGrid(geometry.image_size, geometry.large_patch, geometry.large_stride),
        )

    def quarter_index(self) -> np.ndarray:
        """(large.count, 2, 2) flat indices into the small grid of each large patch's quarters.

        Entry [k, a, b] is the small patch at row offset a*32, column offset b*32 of large patch k,
        matching the (D, 2, 2) layout the secondary encoder is trained on.
        """
        step = self.small.stride
        half = self.small.patch
        o = self.large.offsets()
        rows = (o[:, None, None, None] + half * np.arange(2)[None, None, :, None]) // step
        cols = (o[None, :, None, None] + half * np.arange(2)[None, None, None, :]) // step
        flat = rows * self.small.n + cols  # (n, n, 2, 2) via broadcasting
        return flat.reshape(self.large.count, 2, 2)
