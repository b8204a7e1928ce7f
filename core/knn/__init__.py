"""k-NN + affinity kernels behind one interface (paper section 3.3).

    scorer = make_patch_scorer(codes, positions, grid, scoring)
    scores = scorer.score(query_codes, query_positions)   # (Q,) anomaly score per patch

`scoring.knn` picks the kernel: numpy (exact reference), numba (fused CPU kernel), cuda (GPU-resident
bank), faiss-ivf (approximate candidates + exact re-rank, unaligned parts), or auto (cuda on a GPU, else
numba). The choice is logged.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from sclvi.config import ScoringConfig
from sclvi.errors import BackendError

log = logging.getLogger(__name__)

KERNELS = ("numpy", "numba", "cuda", "faiss-ivf")


class PatchScorer(Protocol):
    name: str

    def score(self, queries: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Anomaly score of each query code; positions (Q, 2) are needed for position windows."""
        ...

    def restricted(self, rows: np.ndarray) -> "PatchScorer":
        """The same kernel over the bank rows `rows` only (image retrieval: sclvi/retrieval.py)."""
        ...


def choose_kernel(scoring: ScoringConfig) -> str:
    if scoring.knn != "auto":
        return scoring.knn
    from sclvi.knn.numba_cuda import cuda_available

    if scoring.window is None and cuda_available():
        return "cuda"
    return "numba"


def make_patch_scorer(codes: np.ndarray, positions: np.ndarray, grid: int | tuple[int, int], scoring: ScoringConfig) -> PatchScorer:
    kind = choose_kernel(scoring)
    if kind == "numpy":
        from sclvi.knn.reference import NumpyPatchScorer

        scorer: PatchScorer = NumpyPatchScorer(codes, positions, grid, scoring)
    elif kind == "numba":
        from sclvi.knn.numba_cpu import NumbaPatchScorer

        scorer = NumbaPatchScorer(codes, positions, grid, scoring)
    elif kind == "faiss-ivf":
        if scoring.window is not None:  # `auto` resolved to an aligned bank: the window is the better search
            from sclvi.knn.numba_cpu import NumbaPatchScorer

            log.info("aligned bank: the position window replaces faiss-ivf")
            scorer = NumbaPatchScorer(codes, positions, grid, scoring)
        else:
            from sclvi.knn.faiss_ivf import FaissIvfPatchScorer

            scorer = FaissIvfPatchScorer(codes, scoring)
    elif kind == "cuda":
        from sclvi.knn.numba_cuda import CudaPatchScorer

        scorer = CudaPatchScorer(codes, scoring)
    else:
        raise BackendError(f"unknown k-NN kernel {kind!r}; choose from {KERNELS} or auto")
    log.info("k-NN kernel: %s (bank %d x %d)", scorer.name, *np.shape(codes))
    return scorer
