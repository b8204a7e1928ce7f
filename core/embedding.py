"""Embed every strided patch of a frame at both scales: one main-encoder call for all 32-px patches,
one secondary-encoder call over the gathered 2x2 grids of those same codes (no second pixel pass)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sclvi.geometry import TwoScaleGeometry


class EncoderBackend(Protocol):
    """What an inference engine offers: the two encoders on batches of float32 arrays."""

    name: str

    def encode_small(self, patches: np.ndarray) -> np.ndarray:
        """(N, 3, 32, 32) -> (N, D)."""
        ...

    def encode_grid(self, grids: np.ndarray) -> np.ndarray:
        """(N, D, 2, 2) -> (N, D)."""
        ...


@dataclass(frozen=True)
class FrameCodes:
    small: np.ndarray  # (B, rows_small, cols_small, D)
    large: np.ndarray  # (B, rows_large, cols_large, D)


class FrameEmbedder:
    """Per-patch path (any encoder family) or, when the backend offers it, the dense one-pass path."""

    def __init__(self, backend: EncoderBackend, geometry: TwoScaleGeometry, neighbourhood: int = 1) -> None:
        """`neighbourhood`: codes averaged over k x k neighbouring patches of their scale (BankConfig)."""
        self.backend = backend
        self.geometry = geometry
        self.neighbourhood = neighbourhood
        self._quarters = geometry.quarter_index()
        self.dense = callable(getattr(backend, "encode_frames", None))

    def embed(self, frames: np.ndarray) -> FrameCodes:
        """(B, 3, H, W) normalised model inputs -> codes of all patches of both scales (aggregated over the
        neighbourhood, the same for the bank and the queries)."""
        codes = self._encode(frames)
        if self.neighbourhood <= 1:
            return codes
        return FrameCodes(aggregate(codes.small, self.neighbourhood), aggregate(codes.large, self.neighbourhood))

    def _encode(self, frames: np.ndarray) -> FrameCodes:
        if frames.ndim == 3:
            frames = frames[None]
        if self.dense:
            small, large = self.backend.encode_frames(np.ascontiguousarray(frames, dtype=np.float32))
            return FrameCodes(small=small.transpose(0, 2, 3, 1), large=large.transpose(0, 2, 3, 1))
        g = self.geometry
        b = len(frames)
        views = [g.small.patches(f) for f in frames]  # zero-copy strided views
        patches = np.stack(views).reshape(b * g.small.count, frames.shape[1], g.small.patch, g.small.patch)
        small = self.backend.encode_small(np.ascontiguousarray(patches, dtype=np.float32))
        dim = small.shape[1]
        small = small.reshape(b, g.small.count, dim)
        grids = small[:, self._quarters]  # (B, n_large^2, 2, 2, D)
        grids = grids.reshape(b * g.large.count, 2, 2, dim).transpose(0, 3, 1, 2)
        large = self.backend.encode_grid(np.ascontiguousarray(grids, dtype=np.float32))
        return FrameCodes(
            small=small.reshape(b, *g.small.shape, dim),
            large=large.reshape(b, *g.large.shape, dim),
        )


def aggregate(codes: np.ndarray, k: int) -> np.ndarray:
    """Each code of a (B, rows, cols, D) grid averaged with its k x k neighbours (edges repeated): PatchCore's
    local neighbourhood aggregation. A patch is then judged with the texture around it, which a defect that
    spans many patches (a differently finished region) changes even where each patch alone looks normal."""
    from scipy.ndimage import uniform_filter

    return uniform_filter(codes, size=(1, k, k, 1), mode="nearest").astype(np.float32, copy=False)
