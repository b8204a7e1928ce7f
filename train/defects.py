"""Synthetic defects made from the training images themselves (no outside data: factories are air-gapped).

Why: the pretext tasks teach codes that say *where* a patch sits; nothing in them asks the codes to
change when a patch is *damaged*, so a k-NN over those codes sees a defect no better than raw pixels
do. A patch-level version of CutPaste (Li et al., CVPR 2021) fixes that: the encoder's codes must also
let a small head tell a clean patch from the same kind of patch with a pasted piece of another
patch, a thin scar, or a smooth brightness blob. The three kinds are generic (what breaks, scratches
and stains look like on any surface) and are drawn fresh every step, so no data set is tuned to.

All functions work on a batch of normalised crops (B, C, k, k) in torch and are seeded by a NumPy
generator, so training stays reproducible.
"""

from __future__ import annotations

import numpy as np
import torch

#: Class 0 is a clean patch; the others are the defect kinds, in this order.
KINDS = ("clean", "paste", "scar", "blob")


def _grid(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    ax = torch.arange(k, dtype=torch.float32)
    return ax.view(1, k, 1), ax.view(1, 1, k)  # rows, cols; broadcast over a batch


def paste_mask(rng: np.random.Generator, n: int, k: int) -> torch.Tensor:
    """(n, 1, k, k) rectangles of 1/8 to 1/2 of the side, aspect 1:3 to 3:1, wholly inside the patch."""
    area = rng.uniform((k / 8) ** 2, (k / 2) ** 2, n)
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n))
    h = np.clip(np.sqrt(area * aspect), 2, k - 2).round()
    w = np.clip(np.sqrt(area / aspect), 2, k - 2).round()
    top = rng.uniform(0, 1, n) * (k - h)
    left = rng.uniform(0, 1, n) * (k - w)
    r, c = _grid(k)
    t = torch.from_numpy(top).float().view(n, 1, 1)
    lf = torch.from_numpy(left).float().view(n, 1, 1)
    m = (r >= t) & (r < t + torch.from_numpy(h).float().view(n, 1, 1)) & (c >= lf) & (c < lf + torch.from_numpy(w).float().view(n, 1, 1))
    return m.float().unsqueeze(1)


def scar_mask(rng: np.random.Generator, n: int, k: int) -> torch.Tensor:
    """(n, 1, k, k) thin segments (1-3 px wide, 1/4 to 3/4 of the side long, any angle) through the patch's
    middle half, with soft edges."""
    cy, cx = (rng.uniform(0.25, 0.75, (2, n)) * k)
    angle = rng.uniform(0, np.pi, n)
    half = rng.uniform(k / 8, 3 * k / 8, n)
    width = rng.uniform(1.0, 3.0, n)
    r, c = _grid(k)
    dy, dx = np.sin(angle), np.cos(angle)
    f = lambda a: torch.from_numpy(a).float().view(n, 1, 1)  # noqa: E731
    along = (r - f(cy)) * f(dy) + (c - f(cx)) * f(dx)
    across = (-(r - f(cy)) * f(dx) + (c - f(cx)) * f(dy)).abs()
    inside = (along.abs() <= f(half)).float()
    m = inside * torch.clamp(f(width) / 2 + 0.5 - across, 0, 1)
    return m.unsqueeze(1)


def blob_mask(rng: np.random.Generator, n: int, k: int) -> torch.Tensor:
    """(n, 1, k, k) smooth elliptical stains (Gaussian, sigma 1/12 to 1/4 of the side, cut at 2.1 sigma)."""
    cy, cx = (rng.uniform(0.25, 0.75, (2, n)) * k)
    sy, sx = (rng.uniform(k / 12, k / 4, (2, n)))
    r, c = _grid(k)
    f = lambda a: torch.from_numpy(a).float().view(n, 1, 1)  # noqa: E731
    m = torch.exp(-0.5 * (((r - f(cy)) / f(sy)) ** 2 + ((c - f(cx)) / f(sx)) ** 2))
    return torch.clamp((m - 0.1) / 0.9, 0, 1).unsqueeze(1)  # cut at 2.1 sigma: a stain, not a whole-patch shift


def _strength(rng: np.random.Generator, n: int, low: float, high: float) -> torch.Tensor:
    """(n, 1, 1, 1) amplitudes of random sign, |a| in [low, high] (normalised units: 1 = 255 gray levels)."""
    a = rng.uniform(low, high, n) * rng.choice([-1.0, 1.0], n)
    return torch.from_numpy(a).float().view(n, 1, 1, 1)


def make_defects(clean: torch.Tensor, donors: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Damage every crop of `clean` (B, C, k, k) with one defect kind drawn uniformly; `donors` (same shape,
    other places of other training images) supply the pasted pieces. Returns (damaged, kind 1..3)."""
    n, _, k, _ = clean.shape
    kind = rng.integers(1, len(KINDS), n)
    out = clean.clone()
    sel = np.flatnonzero(kind == 1)
    if len(sel):
        m = paste_mask(rng, len(sel), k)
        piece = donors[sel] + _strength(rng, len(sel), 0.0, 0.1)  # the piece's own brightness, as CutPaste jitters it
        out[sel] = clean[sel] * (1 - m) + piece * m
    sel = np.flatnonzero(kind == 2)
    if len(sel):
        out[sel] = clean[sel] + scar_mask(rng, len(sel), k) * _strength(rng, len(sel), 0.1, 0.4)
    sel = np.flatnonzero(kind == 3)
    if len(sel):
        out[sel] = clean[sel] + blob_mask(rng, len(sel), k) * _strength(rng, len(sel), 0.05, 0.25)
    return out, torch.from_numpy(kind).long()
