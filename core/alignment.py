"""Is the part aligned? Measured on the memory bank, so the scorer can use positions when they are free.

A position window (compare a patch only with bank codes from nearby grid cells) finds "right content,
wrong place" defects on fixtured parts (earlier lite runs, quality-ablation-cpu.md: bottle image AUROC
92.0 -> 97.2 at +-2 cells, magnetic_tile 61.1 -> 64.8), but on parts that move it starves each patch of its
true neighbours. The test: leave one training image out and compare the nearest-neighbour distance of
its codes to the other images' codes within the window with the distance to all of their codes.
If the window costs normal patches little (ratio close to 1), the part is aligned enough.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sclvi.affinity import knn_exact

#: Window (grid cells) the test measures and recommends.
WINDOW = 2
#: Largest windowed / global nearest-neighbour distance ratio at which the window is recommended.
MAX_RATIO = 1.15


@dataclass(frozen=True)
class Alignment:
    ratio: float  # mean windowed NN distance / mean global NN distance, >= 1
    window: int | None  # recommended scoring.position_window (None: search the whole bank)
    images: int  # held-out images the ratio was measured on

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def measure_alignment(codes: np.ndarray, window: int = WINDOW, max_ratio: float = MAX_RATIO, probes: int = 6,
                      others: int = 48, seed: int = 0, max_cells: int = 4096, sample_cells: int = 1024,
                      max_bank: int = 1 << 20) -> Alignment:
    """`codes`: (images, rows, cols, D) codes of one scale. Each of `probes` images is compared with up to
    `others` other images, windowed and globally. A grid of more than `max_cells` cells (a native-resolution
    roi) is sampled: `sample_cells` query cells per probe, and fewer other images so the compared bank stays
    under `max_bank` codes (seconds, not the hours a whole 5 MP grid would take); smaller grids use every cell."""
    m, nr, nc, d = codes.shape
    if m < 2:
        return Alignment(float("nan"), None, 0)
    rng = np.random.default_rng(seed)
    probe_idx = rng.choice(m, min(probes, m), replace=False)
    others = max(1, min(others, max_bank // (nr * nc)))
    win, glob = [], []
    for p in probe_idx:
        rest = np.delete(np.arange(m), p)
        rest = rest if len(rest) <= others else rng.choice(rest, others, replace=False)
        cells = np.arange(nr * nc) if nr * nc <= max_cells else np.sort(rng.choice(nr * nc, sample_cells, replace=False))
        rows, cols = cells // nc, cells % nc
        q = codes[p].reshape(-1, d)[cells].astype(np.float64)  # (cells, D)
        bank = codes[rest]  # (r, rows, cols, D)
        glob.append(knn_exact(q, bank.reshape(-1, d).astype(np.float64), 1)[0][:, 0])
        best = np.full(len(cells), np.inf)
        for dr in range(-window, window + 1):
            for dc in range(-window, window + 1):
                r, c = rows + dr, cols + dc
                ok = (r >= 0) & (r < nr) & (c >= 0) & (c < nc)
                diff = bank[:, r[ok], c[ok]].astype(np.float64) - q[None, ok]  # (r, cells, D)
                best[ok] = np.minimum(best[ok], (diff**2).sum(-1).min(axis=0))
        win.append(np.sqrt(best))
    g = float(np.mean(np.concatenate(glob)))
    ratio = float(np.mean(np.concatenate(win)) / g) if g > 0 else 1.0
    return Alignment(ratio, window if ratio <= max_ratio else None, len(probe_idx))
