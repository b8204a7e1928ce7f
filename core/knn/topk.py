"""The running top-k insertion, written once and compiled for both targets (Numba CPU and CUDA)."""


def insert_sorted(bd, bi, d, i, n):
    """Insert (d, i) into the ascending lists (bd, bi) of length n if it beats the last entry.

    Order is lexicographic on (distance, index), so equal distances keep the lower bank index first,
    the same tie rule as the NumPy reference."""
    if d > bd[n - 1] or (d == bd[n - 1] and i >= bi[n - 1]):
        return
    pos = n - 1
    while pos > 0 and (bd[pos - 1] > d or (bd[pos - 1] == d and bi[pos - 1] > i)):
        bd[pos] = bd[pos - 1]
        bi[pos] = bi[pos - 1]
        pos -= 1
    bd[pos] = d
    bi[pos] = i
