"""Approximate candidates from a faiss IVF-Flat index, then the exact re-rank and affinity of the numba
kernel: for unaligned parts (no position window) where exact whole-bank search is too slow for the line.

The index clusters the bank into `nlist` cells (k-means on a sample) and each query searches the
`nprobe` nearest cells only; the top eta + margin it returns are re-ranked on exact distances, so the
only approximation is a true neighbour missing from the probed cells (recall: `sclvi bench knn`).
faiss is an optional extra: pip install "sclvi[ann]".
"""

from __future__ import annotations

import logging

import numpy as np

from sclvi.config import ScoringConfig
from sclvi.errors import BackendError
from sclvi.knn.numba_cpu import MARGIN, _finish

log = logging.getLogger(__name__)


class FaissIvfPatchScorer:
    name = "faiss-ivf"

    def __init__(self, codes: np.ndarray, scoring: ScoringConfig, seed: int = 0) -> None:
        try:
            import faiss
        except ImportError:
            raise BackendError("scoring.knn faiss-ivf needs faiss: pip install 'sclvi[ann]' (or use numba)") from None
        self.codes = np.ascontiguousarray(codes, dtype=np.float32)
        self.scoring = scoring
        n, d = self.codes.shape
        nlist = scoring.ivf_nlist or max(1, min(n // 39, int(4 * np.sqrt(n))))  # faiss wants >= 39 points per list
        self.quantizer = faiss.IndexFlatL2(d)
        self.index = faiss.IndexIVFFlat(self.quantizer, d, nlist)
        sample = self.codes
        if n > 256 * nlist:
            sample = self.codes[np.random.default_rng(seed).choice(n, 256 * nlist, replace=False)]
        self.index.train(sample)
        self.index.add(self.codes)
        self.index.nprobe = min(scoring.ivf_nprobe, nlist)
        log.info("faiss IVF-Flat: %d codes in %d lists, %d probed per query", n, nlist, self.index.nprobe)

    def candidates(self, queries: np.ndarray) -> np.ndarray:
        keep = min(self.scoring.eta + MARGIN, len(self.codes))
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), keep)[1].astype(np.int64)

    def score(self, queries: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        s = self.scoring
        q = np.ascontiguousarray(queries, dtype=np.float32)
        out = np.empty(len(q), dtype=np.float64)
        _finish(q, self.codes, self.candidates(q), min(s.eta, len(self.codes)), s.lam, s.formula == "authors", out)
        return out
