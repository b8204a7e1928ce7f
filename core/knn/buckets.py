"""Bank codes grouped by grid cell, for position-aware search on aligned parts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CellBuckets:
    """`order[offsets[c]:offsets[c+1]]` are the bank indices at cell c (ascending)."""

    grid: int
    order: np.ndarray  # (count,) int64
    offsets: np.ndarray  # (grid*grid + 1,) int64

    @classmethod
    def build(cls, positions: np.ndarray, grid: int) -> "CellBuckets":
        cell = positions[:, 0].astype(np.int64) * grid + positions[:, 1].astype(np.int64)
        order = np.argsort(cell, kind="stable")
        offsets = np.zeros(grid * grid + 1, dtype=np.int64)
        np.cumsum(np.bincount(cell, minlength=grid * grid), out=offsets[1:])
        return cls(grid, order.astype(np.int64), offsets)

    def candidates(self, row: int, col: int, window: int) -> np.ndarray:
        """Ascending bank indices within `window` cells of (row, col)."""
        g = self.grid
        parts = [
            self.order[self.offsets[r * g + c] : self.offsets[r * g + c + 1]]
            for r in range(max(0, row - window), min(g, row + window + 1))
            for c in range(max(0, col - window), min(g, col + window + 1))
        ]
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def grid_positions(n: int) -> np.ndarray:
    """(n*n, 2) int16 (row, col) of every patch of one image, in row-major order."""
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.stack([r.ravel(), c.ravel()], axis=1).astype(np.int16)
