"""k-NN + affinity kernels behind one interface (paper section 3.3).

    scorer = make_patch_scorer(codes, positions, grid, scoring)
    scores = scorer.score(query_codes, query_positions)   # (Q,) anomaly score per patch

`scoring.knn` picks the kernel: numpy (exact reference), numba (fused CPU kernel), cuda (GPU-resident
bank, position windows included), faiss-ivf (approximate candidates + exact re-rank, unaligned parts), or
auto (cuda on a GPU; else numba with a position window, faiss-ivf for a large unwindowed search when faiss
is installed, numba otherwise). The choice is logged.
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


#: Above this many query x bank-code pairs per frame and scale, `auto` on a CPU searches an unwindowed bank
#: with faiss-ivf when faiss is installed: exact search runs ~450-600M pairs/s on 2 cores (dim 64; knn-cpu.md),
#: so the threshold is ~170-220 ms a frame. At the line's 256 px / stride 4 with 50 retrieved images a frame
#: is 527M pairs (~900 ms exact, ~65 ms faiss-ivf at the same image AUROC: quality-knn-modes-cpu-stride4.md);
#: stride 8 is 35M and stays exact.
AUTO_IVF_PAIRS = 100_000_000


def _faiss_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("faiss") is not None


def choose_kernel(scoring: ScoringConfig, pairs: int | None = None) -> str:
    """The kernel `scoring.knn` names, or for `auto`: cuda on a GPU (windowed or not: the bank stays on the
    device beside the engines' outputs); on a CPU numba with a position window, faiss-ivf when installed and
    an exact search would visit more than AUTO_IVF_PAIRS `pairs`, numba otherwise."""
    if scoring.knn != "auto":
        return scoring.knn
    from sclvi.knn.numba_cuda import cuda_available

    if cuda_available():
        return "cuda"
    if scoring.window is not None:
        return "numba"
    if pairs is not None and pairs > AUTO_IVF_PAIRS and _faiss_installed():
        return "faiss-ivf"
    return "numba"


def make_patch_scorer(codes: np.ndarray, positions: np.ndarray, grid: int | tuple[int, int], scoring: ScoringConfig,
                      pairs: int | None = None) -> PatchScorer:
    """`pairs`: query x bank-code pairs an exact search of one frame visits here (for `auto`: choose_kernel)."""
    kind = choose_kernel(scoring, pairs)
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

        scorer = CudaPatchScorer(codes, scoring, positions=positions, grid=grid)
    else:
        raise BackendError(f"unknown k-NN kernel {kind!r}; choose from {KERNELS} or auto")
    log.info("k-NN kernel: %s (bank %d x %d)", scorer.name, *np.shape(codes))
    return scorer
