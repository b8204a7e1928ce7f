"""Greedy k-center coreset (as PatchCore): keep the codes that cover the bank best.

Each pick is the code farthest from everything picked so far, so rare-but-normal patterns survive
while near-duplicates (most of a production part's surface) are dropped. Distances for the selection
are taken in a random projection, which preserves them approximately at a fraction of the cost.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from tqdm.auto import tqdm


@njit(parallel=True, cache=True)
def _update_min(x: np.ndarray, center: np.ndarray, mind: np.ndarray) -> int:
    """mind = min(mind, |x - center|^2); returns the argmax of the new mind."""
    n, d = x.shape
    for i in prange(n):
        acc = 0.0
        for j in range(d):
            t = x[i, j] - center[j]
            acc += t * t
        if acc < mind[i]:
            mind[i] = acc
    return int(np.argmax(mind))


def greedy_coreset(codes: np.ndarray, ratio: float, projection_dim: int = 32, seed: int = 0, progress: bool = True) -> np.ndarray:
    """Sorted indices of the selected codes (deterministic for a seed)."""
    n = len(codes)
    keep = max(1, int(round(n * ratio)))
    if keep >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    x = np.asarray(codes, dtype=np.float32)
    if 0 < projection_dim < x.shape[1]:
        proj = rng.normal(size=(x.shape[1], projection_dim)).astype(np.float32) / np.sqrt(projection_dim)
        x = np.ascontiguousarray(x @ proj)
    mind = np.full(n, np.inf, dtype=np.float32)
    picked = np.empty(keep, dtype=np.int64)
    nxt = int(rng.integers(n))
    for k in tqdm(range(keep), desc="coreset", unit="pick", disable=not progress, mininterval=0.5):
        picked[k] = nxt
        nxt = _update_min(x, x[nxt], mind)
    return np.sort(picked)


def cell_coreset(
    codes: np.ndarray, positions: np.ndarray, grid: int | tuple[int, int], ratio: float, min_per_cell: int, projection_dim: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """Sorted indices of a greedy coreset taken inside every grid cell (aligned parts).

    With position windows a query only meets the codes of nearby cells, so a global coreset would
    thin the cells unevenly; here each cell keeps `ratio` of its own codes (at least `min_per_cell`)."""
    from sclvi.knn.buckets import CellBuckets

    buckets = CellBuckets.build(np.asarray(positions), grid)
    keep = []
    for cell in range(buckets.rows * buckets.cols):
        idx = buckets.order[buckets.offsets[cell] : buckets.offsets[cell + 1]]
        if len(idx) == 0:
            continue
        r = min(1.0, max(ratio, min_per_cell / len(idx)))
        keep.append(idx[greedy_coreset(codes[idx], r, projection_dim, seed + cell, progress=False)])
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, np.int64)
