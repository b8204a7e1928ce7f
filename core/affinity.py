"""Exact k-NN and the affinity-augmented patch score (paper section 3.3): the NumPy reference.

This is the oracle that the faster kernels are tested against, so it favours clarity and
determinism (ties between equal distances go to the lower bank index) over speed.
"""

from __future__ import annotations

import numpy as np

#: Bytes of float64 distances one query block may hold (bounds memory on large banks).
_BLOCK_BYTES = 1 << 27


def knn_exact(
    queries: np.ndarray, bank: np.ndarray, k: int, block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest bank rows of each query: (distances ascending, indices), both (Q, k).

    k is clipped to the bank size. Candidates are found with the expanded squared distance in
    float64; the returned distances are recomputed directly, so a duplicate gives exactly 0.
    """
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"queries {queries.shape} and bank {bank.shape} must be (Q, D) and (N, D)")
    if len(bank) == 0:
        raise ValueError("the memory bank is empty")
    k = min(k, len(bank))
    bank64 = np.asarray(bank, dtype=np.float64)
    bank_sq = np.einsum("nd,nd->n", bank64, bank64)
    block = max(1, min(block, _BLOCK_BYTES // (8 * len(bank))))
    dist = np.empty((len(queries), k), dtype=np.float64)
    index = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        q = np.asarray(queries[start : start + block], dtype=np.float64)
        d2 = bank_sq[None, :] - 2.0 * (q @ bank64.T)  # |q|^2 is constant per row: not needed to rank
        idx = _smallest_k(d2, k)
        diff = q[:, None, :] - bank64[idx]
        dist[start : start + len(q)] = np.sqrt(np.einsum("qkd,qkd->qk", diff, diff))
        index[start : start + len(q)] = idx
    # Re-sort on the exact distances (rounding in the expanded form may have swapped near-ties).
    order = np.lexsort((index, dist), axis=1)
    return np.take_along_axis(dist, order, 1), np.take_along_axis(index, order, 1)


def _smallest_k(d2: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest entries of each row, ties broken by the lower index."""
    if k == d2.shape[1]:
        return np.argsort(d2, axis=1, kind="stable")
    part = np.argpartition(d2, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(d2, part, 1).max(axis=1)
    out = np.take_along_axis(part, np.lexsort((part, np.take_along_axis(d2, part, 1)), axis=1), 1)
    # Rows where the k-th value is tied with entries argpartition left out: resolve exactly.
    tied = np.flatnonzero((d2 <= kth[:, None]).sum(axis=1) > k)
    for row in tied:
        cand = np.flatnonzero(d2[row] <= kth[row])
        out[row] = cand[np.lexsort((cand, d2[row, cand]))][:k]
    return out


def affinity_weights(dist: np.ndarray, lam: float) -> np.ndarray:
    """beta = softmax(gamma), gamma_i = min(sum_j d_j / d_i, lambda), per row of (Q, k) distances.

    A zero distance gets gamma = lambda (the limit of the clip), so a query that equals a bank item
    is never a division by zero; if all distances are zero the weights are uniform.
    """
    dist = np.asarray(dist, dtype=np.float64)
    total = dist.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = np.where(dist > 0, total / np.where(dist > 0, dist, 1.0), lam)
    gamma = np.minimum(gamma, lam)
    gamma -= gamma.max(axis=1, keepdims=True)
    w = np.exp(gamma)
    return w / w.sum(axis=1, keepdims=True)


def affinity_scores(
    queries: np.ndarray,
    bank: np.ndarray,
    dist: np.ndarray,
    index: np.ndarray,
    lam: float,
    formula: str = "paper",
) -> np.ndarray:
    """Anomaly score of each query from its k nearest bank items.

    paper:   ||q - sum_i beta_i p_i||  (eq. 4-6)
    authors: sum_i beta_i d_i          (the authors' released code)
    """
    beta = affinity_weights(dist, lam)
    if formula == "authors":
        return (beta * dist).sum(axis=1)
    if formula != "paper":
        raise ValueError(f"unknown scoring formula {formula!r} (paper or authors)")
    fused = np.einsum("qk,qkd->qd", beta, np.asarray(bank, dtype=np.float64)[index])
    return np.linalg.norm(np.asarray(queries, dtype=np.float64) - fused, axis=1)


def patch_scores(
    queries: np.ndarray, bank: np.ndarray, eta: int, lam: float, formula: str = "paper", block: int = 1024
) -> np.ndarray:
    """k-NN + affinity for a set of query codes: the whole reference path in one call."""
    dist, index = knn_exact(queries, bank, eta, block)
    return affinity_scores(queries, bank, dist, index, lam, formula)
