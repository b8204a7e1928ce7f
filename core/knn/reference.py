"""NumPy reference scorer: exact, simple, the oracle the fast kernels are tested against."""

from __future__ import annotations

import numpy as np

from sclvi.affinity import affinity_scores, knn_exact
from sclvi.config import ScoringConfig
from sclvi.knn.buckets import CellBuckets, short_window


class NumpyPatchScorer:
    name = "numpy"

    def __init__(self, codes: np.ndarray, positions: np.ndarray, grid: int | tuple[int, int], scoring: ScoringConfig) -> None:
        self.codes = np.asarray(codes, dtype=np.float32)
        self.scoring = scoring
        self.positions, self.grid = np.asarray(positions), grid
        self.buckets = CellBuckets.build(self.positions, grid) if scoring.window is not None else None

    def restricted(self, rows: np.ndarray) -> "NumpyPatchScorer":
        """The same search over the bank rows `rows` only (image retrieval)."""
        return NumpyPatchScorer(self.codes[rows], self.positions[rows], self.grid, self.scoring)

    def search(self, queries: np.ndarray, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, bank indices) of each query's eta nearest codes, ascending, ties by index."""
        s = self.scoring
        if self.buckets is None:
            return knn_exact(queries, self.codes, s.eta, s.query_block)
        if positions is None:
            raise ValueError("position-aware search needs the queries' grid positions")
        k = s.eta
        dist = np.full((len(queries), k), np.inf)
        index = np.full((len(queries), k), -1, dtype=np.int64)
        for i, (q, (r, c)) in enumerate(zip(queries, positions)):
            cand = self.buckets.candidates(int(r), int(c), s.window)
            d, j = knn_exact(q[None], self.codes[cand], k)
            dist[i, : d.shape[1]], index[i, : d.shape[1]] = d[0], cand[j[0]]
        if (index < 0).any():
            raise short_window(k)
        return dist, index

    def score(self, queries: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        dist, index = self.search(queries, positions)
        return affinity_scores(queries, self.codes, dist, index, self.scoring.lam, self.scoring.formula)
