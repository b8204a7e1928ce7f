"""Numba CUDA scorer against a GPU-resident memory bank.

The bank (float32, or float16 to halve memory traffic) and its squared norms are uploaded once, when
the scorer is built, and stay on the device. Queries may be host arrays or device arrays (anything with
`__cuda_array_interface__`, e.g. an engine's output buffer), so the encoder output never has to come
back to the host before the k-NN.

Kernel 1 (grid: query tiles x bank splits): each thread owns one query, the block streams its bank
split through shared memory in tiles and keeps a running top-(eta + margin) per thread.
Kernel 2 (one thread per query): merges the splits' candidates, re-ranks them on exact distances
(ties to the lower index, as the reference), and computes the affinity-fused score.
Position windows (aligned parts): the bank is uploaded sorted by grid cell, so each bank row of a query's
window is one contiguous run; one thread per query walks its window's runs (float32 pre-selection), then the
same exact re-rank and affinity. Image retrieval there keeps the bank where it is and uploads only which
places are searched, as the CPU kernel does.
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache

import numpy as np
from numba import float32, float64, int64

try:  # kernels must see `cuda` as a module global: the CUDA simulator swaps it there
    from numba import cuda
except ImportError:  # a numba without any CUDA target
    cuda = None

from sclvi.config import ScoringConfig
from sclvi.errors import BackendError
from sclvi.knn.buckets import CellBuckets, grid_shape, short_window
from sclvi.knn.numba_cpu import MARGIN
from sclvi.knn.topk import insert_sorted

TILE = 32  # bank codes per shared-memory tile
THREADS = 64  # queries per block


def cuda_available() -> bool:
    """A real or simulated CUDA device that Numba can use."""
    if cuda is None:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver install must not crash auto-selection
        return False


@lru_cache(maxsize=None)
def _fused_score(dim: int, k: int):
    """Device function: exact float64 re-rank of `ncand` candidate bank indices (-1: none) to the eta nearest,
    then eq. 4-6 (or the authors' weighted distance). Index j's code is bank[at[j]] (a bank stored sorted by
    cell) or bank[j] where `at` is empty; ties go to the lower index j, as in the reference."""
    insert = cuda.jit(device=True)(insert_sorted)

    @cuda.jit(device=True)
    def fused(queries, qi, bank, at, cand, ncand, lam, authors):
        dd = cuda.local.array(k, float64)
        di = cuda.local.array(k, int64)
        for t in range(k):
            dd[t] = math.inf
            di[t] = 1 << 62
        for c in range(ncand):
            j = cand[c]
            if j < 0:
                continue
            p = j if at.shape[0] == 0 else at[j]
            acc = float64(0.0)
            for t in range(dim):
                diff = float64(queries[qi, t]) - float64(bank[p, t])
                acc += diff * diff
            insert(dd, di, math.sqrt(acc), j, k)
        total = float64(0.0)
        for t in range(k):
            total += dd[t]
        gmax = float64(-math.inf)
        w = cuda.local.array(k, float64)
        for t in range(k):
            g = lam if dd[t] <= 0.0 else total / dd[t]
            w[t] = min(g, lam)
            gmax = max(gmax, w[t])
        wsum = float64(0.0)
        for t in range(k):
            w[t] = math.exp(w[t] - gmax)
            wsum += w[t]
        if authors:
            s = float64(0.0)
            for t in range(k):
                s += w[t] / wsum * dd[t]
            return s
        acc = float64(0.0)
        for c in range(dim):
            fused_c = float64(0.0)
            for t in range(k):
                p = di[t] if at.shape[0] == 0 else at[di[t]]
                fused_c += w[t] / wsum * float64(bank[p, c])
            diff = float64(queries[qi, c]) - fused_c
            acc += diff * diff
        return math.sqrt(acc)

    return fused


@lru_cache(maxsize=None)
def _kernels(dim: int, keep: int, k: int, candidates: int):
    insert = cuda.jit(device=True)(insert_sorted)
    fused = _fused_score(dim, k)

    @cuda.jit
    def partial_topk(queries, bank, bank_sq, split_len, out_i):
        tid = cuda.threadIdx.x
        qi = cuda.blockIdx.x * THREADS + tid
        split = cuda.blockIdx.y
        n_bank = bank.shape[0]
        start = split * split_len
        stop = min(start + split_len, n_bank)
        tile = cuda.shared.array((TILE, dim), float32)
        tile_sq = cuda.shared.array(TILE, float32)
        qv = cuda.local.array(dim, float32)
        bd = cuda.local.array(keep, float32)
        bi = cuda.local.array(keep, int64)
        active = qi < queries.shape[0]
        for t in range(keep):
            bd[t] = math.inf
            bi[t] = -1
        if active:
            for c in range(dim):
                qv[c] = queries[qi, c]
        for t0 in range(start, stop, TILE):
            for e in range(tid, TILE * dim, THREADS):
                r = e // dim
                j = t0 + r
                tile[r, e % dim] = float32(bank[j, e % dim]) if j < stop else float32(0.0)
            for e in range(tid, TILE, THREADS):
                tile_sq[e] = bank_sq[t0 + e] if t0 + e < stop else float32(math.inf)
            cuda.syncthreads()
            if active:
                for r in range(min(TILE, stop - t0)):
                    dot = float32(0.0)
                    for c in range(dim):
                        dot += qv[c] * tile[r, c]
                    d = tile_sq[r] - float32(2.0) * dot
                    insert(bd, bi, d, t0 + r, keep)
            cuda.syncthreads()
        if active:
            for t in range(keep):
                out_i[qi, split * keep + t] = bi[t]

    @cuda.jit
    def finish(queries, bank, at, cand, lam, authors, out):
        qi = cuda.grid(1)
        if qi < queries.shape[0]:
            out[qi] = fused(queries, qi, bank, at, cand[qi], candidates, lam, authors)

    return partial_topk, finish


@lru_cache(maxsize=None)
def _window_kernel(dim: int, keep: int, k: int):
    """One thread per query: the bank is stored sorted by grid cell, so each bank row of the query's window is
    one contiguous run of places (`offsets` per cell into `sel`, the places searched: all of them, or those of
    the images that image retrieval kept). Float32 pre-selection of eta + margin, then the exact re-rank."""
    insert = cuda.jit(device=True)(insert_sorted)
    fused = _fused_score(dim, k)

    @cuda.jit
    def windowed(queries, qrow, qcol, sbank, sbank_sq, offsets, sel, order, at, rows, cols, window, lam, authors,
                 out, short):
        qi = cuda.grid(1)
        if qi >= queries.shape[0]:
            return
        qv = cuda.local.array(dim, float32)
        bd = cuda.local.array(keep, float32)
        bi = cuda.local.array(keep, int64)
        for t in range(keep):
            bd[t] = math.inf
            bi[t] = -1
        for c in range(dim):
            qv[c] = queries[qi, c]
        row = qrow[qi]
        c0 = max(0, qcol[qi] - window)
        c1 = min(cols, qcol[qi] + window + 1)
        for br in range(max(0, row - window), min(rows, row + window + 1)):
            for jj in range(offsets[br * cols + c0], offsets[br * cols + c1]):
                j = sel[jj]
                dot = float32(0.0)
                for c in range(dim):
                    dot += qv[c] * float32(sbank[j, c])
                insert(bd, bi, sbank_sq[j] - float32(2.0) * dot, order[j], keep)  # ties: original index
        if bi[k - 1] < 0:
            short[qi] = 1
            out[qi] = math.nan
            return
        out[qi] = fused(queries, qi, sbank, at, bi, keep, lam, authors)

    return windowed


@lru_cache(maxsize=None)
def _gather_kernel():
    """dst[i] = src[rows[i]], dst_sq[i] = src_sq[rows[i]]: a sub-bank made on the device (image retrieval)."""

    @cuda.jit
    def gather(src, src_sq, rows, dst, dst_sq):
        i = cuda.grid(1)
        if i < rows.shape[0]:
            j = rows[i]
            for t in range(src.shape[1]):
                dst[i, t] = src[j, t]
            dst_sq[i] = src_sq[j]

    return gather


class CudaPatchScorer:
    name = "cuda"

    def __init__(self, codes: np.ndarray, scoring: ScoringConfig, splits: int = 0, positions: np.ndarray | None = None,
                 grid: int | tuple[int, int] | None = None) -> None:
        """`positions` (N, 2) and `grid`: the bank codes' grid cells, needed with a position window."""
        if not cuda_available():
            raise BackendError("no CUDA device for the cuda k-NN kernel (install sclvi[gpu] on a GPU machine)")
        self.scoring = scoring
        dtype = np.float16 if scoring.gpu_bank_dtype == "float16" else np.float32
        host = np.ascontiguousarray(codes, dtype=dtype)
        self.n, self.dim = host.shape
        self.stream = cuda.stream()
        sq = np.einsum("nd,nd->n", host.astype(np.float32), host.astype(np.float32)).astype(np.float32)
        self.buckets: CellBuckets | None = None
        self.at = cuda.to_device(np.empty(0, np.int64), stream=self.stream)  # empty: index j's code is bank[j]
        if scoring.window is not None:
            if positions is None or grid is None:
                raise ValueError("a position window needs the bank codes' grid positions and the grid")
            self.rows, self.cols = grid_shape(grid)
            self.buckets = CellBuckets.build(np.asarray(positions), (self.rows, self.cols))
            order = self.buckets.order
            self.sorted_at = self.buckets.sorted_at  # bank index -> place in the sorted bank
            host, sq = np.ascontiguousarray(host[order]), sq[order]
            self.order = cuda.to_device(order, stream=self.stream)
            self.at = cuda.to_device(self.sorted_at, stream=self.stream)
            self._searched(np.arange(self.n, dtype=np.int64), None)
        # Uploaded once: the bank stays on the device for the scorer's lifetime.
        self.bank = cuda.to_device(host, stream=self.stream)
        self.bank_sq = cuda.to_device(sq, stream=self.stream)
        self._plan(splits)

    def _searched(self, places: np.ndarray, bank_rows: np.ndarray | None) -> None:
        """Windowed: the places of the sorted bank that are searched (ascending) and where each cell starts
        among them, on the device; `bank_rows`: these rows of the full bank (None: all)."""
        assert self.buckets is not None
        self.sel = cuda.to_device(places, stream=self.stream)
        self.offsets = cuda.to_device(self.buckets.starts_among(places), stream=self.stream)
        self.bank_rows = bank_rows

    def _plan(self, splits: int = 0) -> None:
        self.k = min(self.scoring.eta, self.n)
        self.keep = min(self.scoring.eta + MARGIN, self.n)
        self.splits = splits or max(1, min(64, math.ceil(self.n / 4096)))
        self.split_len = math.ceil(self.n / self.splits)
        if self.buckets is not None:
            self.windowed = _window_kernel(self.dim, self.scoring.eta + MARGIN, self.scoring.eta)
        else:
            self.partial, self.finish = _kernels(self.dim, self.keep, self.k, self.splits * self.keep)

    def restricted(self, rows: np.ndarray) -> "CudaPatchScorer":
        """The same kernels over the bank rows `rows` only (image retrieval): a sub-bank gathered on the device
        from the resident bank, or windowed, the bank left where it is and only the searched places uploaded.
        Only row indices cross the bus."""
        sub = copy.copy(self)
        if self.buckets is not None:
            full = np.asarray(rows, dtype=np.int64) if self.bank_rows is None else self.bank_rows[rows]
            sub._searched(np.sort(self.sorted_at[full]), full)
            return sub
        d_rows = cuda.to_device(np.ascontiguousarray(rows, dtype=np.int64), stream=self.stream)
        sub.n = len(rows)
        sub.bank = cuda.device_array((sub.n, self.dim), dtype=self.bank.dtype, stream=self.stream)
        sub.bank_sq = cuda.device_array(sub.n, dtype=np.float32, stream=self.stream)
        _gather_kernel()[math.ceil(sub.n / 128), 128, self.stream](self.bank, self.bank_sq, d_rows, sub.bank, sub.bank_sq)
        sub._plan()
        return sub

    def score(self, queries, positions: np.ndarray | None = None) -> np.ndarray:
        if hasattr(queries, "__cuda_array_interface__"):
            d_q = cuda.as_cuda_array(queries)
        else:
            d_q = cuda.to_device(np.ascontiguousarray(queries, dtype=np.float32), stream=self.stream)
        nq = d_q.shape[0]
        out = cuda.device_array(nq, dtype=np.float64, stream=self.stream)
        lam, authors = float(self.scoring.lam), self.scoring.formula == "authors"
        if self.buckets is not None:
            if positions is None:
                raise ValueError("position-aware search needs the queries' grid positions")
            pos = np.asarray(positions, dtype=np.int64)
            rows_, cols_ = (cuda.to_device(np.ascontiguousarray(pos[:, i]), stream=self.stream) for i in (0, 1))
            short = cuda.to_device(np.zeros(nq, np.uint8), stream=self.stream)
            self.windowed[math.ceil(nq / THREADS), THREADS, self.stream](
                d_q, rows_, cols_, self.bank, self.bank_sq, self.offsets, self.sel, self.order, self.at, self.rows,
                self.cols, int(self.scoring.window), lam, authors, out, short)
            result = out.copy_to_host(stream=self.stream)
            missing = short.copy_to_host(stream=self.stream)
            self.stream.synchronize()
            if missing.any():
                raise short_window(self.scoring.eta)
            return result
        cand = cuda.device_array((nq, self.splits * self.keep), dtype=np.int64, stream=self.stream)
        grid = (math.ceil(nq / THREADS), self.splits)
        self.partial[grid, THREADS, self.stream](d_q, self.bank, self.bank_sq, self.split_len, cand)
        self.finish[math.ceil(nq / 128), 128, self.stream](d_q, self.bank, self.at, cand, lam, authors, out)
        result = out.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        return result
