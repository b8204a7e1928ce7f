"""Shared k-NN test cases: random data with the awkward cases the kernels must get right."""

import numpy as np

from sclvi.knn.buckets import grid_positions


def cases(n_queries: int = 100, n_bank: int = 300, dim: int = 16, seed: int = 0):
    """(name, queries, bank, positions, grid) tuples."""
    rng = np.random.default_rng(seed)
    grid = 5
    pos = np.tile(grid_positions(grid), (n_bank // 25 + 1, 1))[:n_bank]
    normal = rng.normal(size=(n_bank, dim)).astype(np.float32)
    ints = rng.integers(-1, 2, size=(n_bank, dim)).astype(np.float32)  # exact ties everywhere
    dup = normal.copy()
    dup[1::2] = dup[::2][: len(dup[1::2])]  # every code twice
    q_normal = rng.normal(size=(n_queries, dim)).astype(np.float32)
    q_ints = rng.integers(-1, 2, size=(n_queries, dim)).astype(np.float32)
    q_zero = normal[rng.integers(0, n_bank, n_queries)]  # every query is a bank code: zero distance
    return [
        ("random", q_normal, normal, pos, grid),
        ("ties", q_ints, ints, pos, grid),
        ("duplicates", q_normal, dup, pos, grid),
        ("zero distance", q_zero, normal, pos, grid),
    ]
