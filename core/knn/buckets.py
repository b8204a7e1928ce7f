"""Bank codes grouped by grid cell, for position-aware search on aligned parts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GridShape = tuple[int, int]


def grid_shape(grid: int | tuple[int, int]) -> GridShape:
    """(rows, cols) of a patch grid; a bare int is a square grid (banks written before ROIs)."""
    if isinstance(grid, (int, np.integer)):
        return int(grid), int(grid)
    rows, cols = grid
    return int(rows), int(cols)


@dataclass(frozen=True)
class CellBuckets:
    """`order[offsets[c]:offsets[c+1]]` are the bank indices at cell c = row * cols + col (ascending)."""

    rows: int
    cols: int
    order: np.ndarray  # (count,) int64
    offsets: np.ndarray  # (rows*cols + 1,) int64

    @classmethod
    def build(cls, positions: np.ndarray, grid: int | GridShape) -> "CellBuckets":
        rows, cols = grid_shape(grid)
        cell = positions[:, 0].astype(np.int64) * cols + positions[:, 1].astype(np.int64)
        order = np.argsort(cell, kind="stable")
        offsets = np.zeros(rows * cols + 1, dtype=np.int64)
        np.cumsum(np.bincount(cell, minlength=rows * cols), out=offsets[1:])
        return cls(rows, cols, order.astype(np.int64), offsets)

    @property
    def sorted_at(self) -> np.ndarray:
        """Bank index -> its place in the bank sorted by cell (the inverse of `order`)."""
        at = np.empty_like(self.order)
        at[self.order] = np.arange(len(self.order))
        return at

    def starts_among(self, places: np.ndarray) -> np.ndarray:
        """Where each cell starts among `places` (ascending places of the sorted bank that are searched, e.g.
        those of the images image retrieval kept): cell c's places are places[starts[c]:starts[c + 1]]."""
        return np.searchsorted(places, self.offsets).astype(np.int64)

    def candidates(self, row: int, col: int, window: int) -> np.ndarray:
        """Ascending bank indices within `window` cells of (row, col)."""
        c_ = self.cols
        parts = [
            self.order[self.offsets[r * c_ + c] : self.offsets[r * c_ + c + 1]]
            for r in range(max(0, row - window), min(self.rows, row + window + 1))
            for c in range(max(0, col - window), min(c_, col + window + 1))
        ]
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def grid_positions(grid: int | GridShape) -> np.ndarray:
    """(rows*cols, 2) int16 (row, col) of every patch of one image, in row-major order."""
    rows, cols = grid_shape(grid)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([r.ravel(), c.ravel()], axis=1).astype(np.int16)


def short_window(eta: int) -> ValueError:
    """What every windowed kernel raises when a query's window holds fewer than eta bank codes."""
    return ValueError(f"fewer than eta={eta} bank codes in some position windows: widen the window or lower eta")
