"""Pretext-task sampling: where to cut the patches and what label they get (NumPy, seeded).

Three tasks share one 3x3 grid sampler so the ablation differs only in the pair that is picked:
- ``scl12`` (the paper): any 2 of the 9 cells, labelled by their displacement up to sign (12 classes).
  The class is drawn first (uniformly), then one of its cell pairs: drawing the 36 pairs uniformly would
  give the two one-cell displacements 6 pairs each and the long diagonals 1, a 6:1 class prior whose
  majority guess (1/6) sits far above the 1/12 that reported accuracies were compared with;
- ``jigsaw8`` (Patch SVDD / Doersch): the centre cell and one of its 8 neighbours (8 classes);
- ``none``: no pretext task, only the patch-SVDD term.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from sclvi.errors import ConfigError

#: Displacement (drow, dcol) of the later cell relative to the earlier one -> class, in the order of
#: the authors' released code. Cells 0..8 are numbered row by row.
SCL12_CLASSES: dict[tuple[int, int], int] = {
    (0, 1): 0, (1, 0): 1, (0, 2): 2, (2, 0): 3, (1, 1): 4, (1, -1): 5,
    (1, 2): 6, (1, -2): 7, (2, 1): 8, (2, -1): 9, (2, 2): 10, (2, -2): 11,
}

#: Patch SVDD's neighbour order around the centre cell 4 -> class.
JIGSAW8_CLASSES: dict[tuple[int, int], int] = {
    (-1, -1): 0, (-1, 0): 1, (-1, 1): 2, (0, -1): 3, (0, 1): 4, (1, -1): 5, (1, 0): 6, (1, 1): 7,
}

N_CLASSES = {"scl12": 12, "jigsaw8": 8, "none": 0}


def scl12_pair_table() -> np.ndarray:
    """The 36 unordered cell pairs (i < j) and their class: a (36, 3) array of (i, j, class)."""
    rows = []
    for i, j in combinations(range(9), 2):
        d = (j // 3 - i // 3, j % 3 - i % 3)
        rows.append((i, j, SCL12_CLASSES[d]))
    return np.array(rows, dtype=np.int64)


_PAIRS = scl12_pair_table()
#: For each class, the rows of _PAIRS in it (padded by repetition to a rectangle for vectorised draws).
_BY_CLASS = [np.flatnonzero(_PAIRS[:, 2] == c) for c in range(12)]
_CLASS_ROWS = np.stack([np.resize(rows, 12) for rows in _BY_CLASS])  # 12 is a multiple of 1, 2, 3, 4, 6
_NEIGHBOURS = np.array([4 + 3 * dr + dc for (dr, dc) in JIGSAW8_CLASSES], dtype=np.int64)


@dataclass(frozen=True)
class PatchPairs:
    """Two batches of patch positions (image index, top, left) and the pair labels."""

    image: np.ndarray
    first: np.ndarray  # (B, 2) top-left of p1
    second: np.ndarray  # (B, 2) top-left of p2
    label: np.ndarray  # (B,) class, or -1 for SVDD twins


def jitter(patch: int, jitter_frac: float) -> int:
    """J: the most a grid cell moves (the paper's 0-16 px for 64-px patches at 0.25)."""
    return int(round(patch * jitter_frac))


def grid_span(patch: int, jitter_frac: float) -> int:
    """Side of the area a 3x3 grid of cells (spacing patch - J, jitter 0..J) can occupy: the smallest input side
    the pretext task trains on (`sclvi roi` proposes no smaller)."""
    return 3 * patch - jitter(patch, jitter_frac)


class PretextSampler:
    """Draws 3x3 jittered grids, cell pairs and patch-SVDD twins from a stack of (height, width) images."""

    def __init__(
        self, n_images: int, image_hw: int | tuple[int, int], jitter_frac: float, svdd_shift_frac: float, seed: int
    ) -> None:
        self.n_images = n_images
        self.image_hw = np.array((image_hw, image_hw) if isinstance(image_hw, int) else image_hw, dtype=np.int64)
        self.jitter_frac = jitter_frac
        self.svdd_shift_frac = svdd_shift_frac
        self.rng = np.random.default_rng(seed)

    def jitter(self, patch: int) -> int:
        return jitter(patch, self.jitter_frac)

    def grid_span(self, patch: int) -> int:
        return grid_span(patch, self.jitter_frac)

    def check_fits(self, patch: int) -> None:
        if self.grid_span(patch) > self.image_hw.min():
            raise ConfigError(
                f"a 3x3 grid of {patch}-px patches spans {self.grid_span(patch)} px, more than the "
                f"{self.image_hw[1]}x{self.image_hw[0]}-px training inputs: enlarge the input (geometry.image_size, "
                "or the roi / scale) or lower train.jitter_frac"
            )

    def grid_pairs(self, task: str, patch: int, batch: int) -> PatchPairs:
        """Pick two cells of a jittered 3x3 grid per sample and label them for `task`."""
        self.check_fits(patch)
        rng = self.rng
        j = self.jitter(patch)
        spacing = patch - j
        if task == "scl12":
            cls = rng.integers(0, 12, batch)
            rows = _PAIRS[_CLASS_ROWS[cls, rng.integers(0, 12, batch)]]
            cell1, cell2, label = rows[:, 0], rows[:, 1], rows[:, 2]
        elif task == "jigsaw8":
            label = rng.integers(0, 8, batch)
            cell1, cell2 = np.full(batch, 4), _NEIGHBOURS[label]
        else:
            raise ValueError(f"task {task!r} has no cell pairs")
        origin = rng.integers(0, self.image_hw - self.grid_span(patch) + 1, (batch, 2))

        def corner(cell: np.ndarray) -> np.ndarray:
            rc = np.stack([cell // 3, cell % 3], axis=1)
            return origin + rc * spacing + rng.integers(0, j + 1, (batch, 2))

        image = rng.integers(0, self.n_images, batch)
        return PatchPairs(image, corner(cell1), corner(cell2), label.astype(np.int64))

    def svdd_twins(self, patch: int, batch: int) -> PatchPairs:
        """A patch and a twin shifted by 1..s pixels (never zero), both inside the image."""
        rng = self.rng
        s = max(1, int(round(patch * self.svdd_shift_frac)))
        top = self.image_hw - patch  # (row, col) bounds
        first = rng.integers(0, top + 1, (batch, 2))
        shift = rng.integers(-s, s + 1, (batch, 2))
        zero = (shift == 0).all(axis=1)
        shift[zero, 0] = rng.choice([-1, 1], zero.sum())
        second = np.clip(first + shift, 0, top)
        same = (second == first).all(axis=1)  # clipped back onto the original at a border
        second[same] = np.clip(first[same] - shift[same], 0, top)
        image = rng.integers(0, self.n_images, batch)
        return PatchPairs(image, first, second, np.full(batch, -1, dtype=np.int64))

    def gray_shift(self, batch: int, amount: float) -> np.ndarray:
        """Per-patch brightness offset (same on all channels): defeats colour shortcuts."""
        return self.rng.uniform(-amount, amount, (batch, 1, 1, 1)).astype(np.float32)
