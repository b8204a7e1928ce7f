"""Approximate candidates from a faiss IVF-Flat index, then the exact re-rank and affinity of the numba
kernel: for unaligned parts (no position window) where exact whole-bank search is too slow for the line.

The index clusters the bank into `nlist` cells (k-means on a sample) and each query searches the
`nprobe` nearest cells only; the top eta + margin it returns are re-ranked on exact distances, so the
only approximation is a true neighbour missing from the probed cells (recall: `sclvi bench knn`).
Image retrieval restricts the search with a bitmap of the kept rows (faiss's IDSelectorBitmap), so the
index is built once for the whole bank; a query whose probed cells hold fewer than eta kept codes is searched
again over 4x as many cells, up to all of them. faiss is an optional extra: pip install "sclvi[ann]".
"""

from __future__ import annotations

import copy
import logging
import time

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
        t0 = time.perf_counter()
        # k-means on 64 codes per list (faiss asks 39-256); every worker start builds the index. A 650k-code
        # stride-4 bank of the tiles: 15 s instead of 38 s with 256 per list, recall@10 0.988 vs 0.990 at nprobe 8
        sample = self.codes
        if n > 64 * nlist:
            sample = self.codes[np.random.default_rng(seed).choice(n, 64 * nlist, replace=False)]
        self.index.train(sample)
        self.index.add(self.codes)
        self.index.nprobe = min(scoring.ivf_nprobe, nlist)
        self.bank_rows: np.ndarray | None = None  # restricted: this scorer's rows in the full bank
        self._bitmap: np.ndarray | None = None  # kept alive: faiss reads it through a raw pointer
        self._selector = None
        log.info("faiss IVF-Flat: %d codes in %d lists, %d probed per query (built in %.1f s)", n, nlist,
                 self.index.nprobe, time.perf_counter() - t0)

    def restricted(self, rows: np.ndarray) -> "FaissIvfPatchScorer":
        """The same index searched over the bank rows `rows` only (image retrieval, sclvi/retrieval.py): a
        bitmap per frame, the index is shared."""
        import faiss

        sub = copy.copy(self)
        sub.bank_rows = np.asarray(rows, dtype=np.int64) if self.bank_rows is None else self.bank_rows[rows]
        kept = np.zeros(len(self.codes), dtype=bool)
        kept[sub.bank_rows] = True
        sub._bitmap = np.packbits(kept, bitorder="little")  # faiss: bit (id & 7) of byte (id >> 3)
        sub._selector = faiss.IDSelectorBitmap(len(kept), faiss.swig_ptr(sub._bitmap))
        return sub

    @property
    def searched(self) -> int:
        """How many bank codes this scorer searches (all, or the rows it was restricted to)."""
        return len(self.codes) if self.bank_rows is None else len(self.bank_rows)

    def _search(self, q: np.ndarray, keep: int, nprobe: int) -> np.ndarray:
        import faiss

        params = faiss.SearchParametersIVF()  # per call: the shared index is never changed
        params.nprobe = nprobe
        if self._selector is not None:
            params.sel = self._selector
        return self.index.search(q, keep, params=params)[1].astype(np.int64)

    def candidates(self, queries: np.ndarray) -> np.ndarray:
        """(Q, eta + margin) bank indices (-1 past the bank's end); every query gets at least eta."""
        searched = self.searched
        keep = min(self.scoring.eta + MARGIN, searched)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        nprobe = min(self.scoring.ivf_nprobe, self.index.nlist)
        need = min(self.scoring.eta, searched)
        found = self._search(q, keep, nprobe)
        short = found[:, need - 1] < 0  # its probed lists held too few kept codes
        while short.any() and nprobe < self.index.nlist:  # 4x the lists each round; all of them at last
            nprobe = min(4 * nprobe, self.index.nlist)
            found[short] = self._search(q[short], keep, nprobe)
            short = found[:, need - 1] < 0
        return found

    def score(self, queries: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        s = self.scoring
        q = np.ascontiguousarray(queries, dtype=np.float32)
        out = np.empty(len(q), dtype=np.float64)
        _finish(q, self.codes, self.candidates(q), min(s.eta, self.searched), s.lam, s.formula == "authors", out)
        return out
