"""Synthetic defects made from the training images themselves (no outside data: factories are air-gapped).

Why: the pretext tasks teach codes that say *where* a patch sits; nothing in them asks the codes to
change when a patch is *damaged*, so a k-NN over those codes sees a defect no better than raw pixels
do. A patch-level version of CutPaste (Li et al., CVPR 2021) fixes that: the encoder's codes must also
let a small head tell a clean patch from the same kind of patch with a pasted piece of another
patch, a thin scar, or a smooth brightness blob. The three kinds are generic (what breaks, scratches
and stains look like on any surface) and are drawn fresh every step, so no data set is tuned to. A fourth,
`finish` (a region whose fine grain is smoothed away or strengthened), is there to be switched on with
`train.defect_kinds`; it is not a default: on the tiles (2 seeds) it lowered the mean of every figure, `uneven`
included (README).

All functions work on a batch of normalised crops (B, C, k, k) in torch and are seeded by a NumPy
generator, so training stays reproducible.
"""

from __future__ import annotations

from typing import get_args

import numpy as np
import torch

from sclvi.config import DefectKind, TrainConfig

#: Every defect kind there is (config.DefectKind); a model trains on `train.defect_kinds` of them (class 0 is a
#: clean patch, class i the i-th kind it trains on).
KINDS: tuple[str, ...] = get_args(DefectKind)
#: What `train.defect_kinds` is unless set: what breaks, scratches and stains look like on any surface.
DEFAULT_KINDS: tuple[str, ...] = TrainConfig.model_fields["defect_kinds"].default


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


def finish_mask(rng: np.random.Generator, n: int, k: int) -> torch.Tensor:
    """(n, 1, k, k) one side of a straight line at any angle, its boundary 15-85 % of the way across (soft, 1 px
    wide); a quarter of them the whole patch (a region of another finish seen from inside, no boundary in view)."""
    angle = rng.uniform(0, 2 * np.pi, n)
    offset = rng.uniform(-0.35, 0.35, n) * k
    whole = rng.uniform(0, 1, n) < 0.25
    r, c = _grid(k)
    f = lambda a: torch.from_numpy(a).float().view(n, 1, 1)  # noqa: E731
    side = (r - (k - 1) / 2) * f(np.sin(angle)) + (c - (k - 1) / 2) * f(np.cos(angle)) - f(offset)
    m = torch.clamp(side + 0.5, 0, 1)
    m[torch.from_numpy(whole)] = 1.0
    return m.unsqueeze(1)


def _blur(x: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
    """Per-sample separable Gaussian blur of (n, C, k, k), reflecting at the border."""
    n, ch, k, _ = x.shape
    radius = int(np.ceil(3 * sigma.max()))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (t.view(1, -1) / torch.from_numpy(sigma).float().view(-1, 1)) ** 2)
    g = (g / g.sum(dim=1, keepdim=True)).repeat_interleave(ch, dim=0)  # (n * C, taps)
    y = torch.nn.functional.pad(x.reshape(1, n * ch, k, k), (radius,) * 4, mode="reflect")
    y = torch.nn.functional.conv2d(y, g.view(n * ch, 1, 1, -1), groups=n * ch)
    y = torch.nn.functional.conv2d(y, g.view(n * ch, 1, -1, 1), groups=n * ch)
    return y.view(n, ch, k, k)


def refinish(clean: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The crops' fine texture (what is left after a Gaussian blur of 1-2.5 px) smoothed away by half or more,
    or strengthened 1.7-2.5 times: the mean gray level kept, the grain changed, as a different grind, polish
    or coating finish changes it."""
    n = clean.shape[0]
    detail = clean - _blur(clean, rng.uniform(1.0, 2.5, n))
    smoother = rng.uniform(0, 1, n) < 0.5
    gain = np.where(smoother, rng.uniform(-0.9, -0.5, n), rng.uniform(0.7, 1.5, n))
    return clean + torch.from_numpy(gain).float().view(n, 1, 1, 1) * detail


def _strength(rng: np.random.Generator, n: int, low: float, high: float) -> torch.Tensor:
    """(n, 1, 1, 1) amplitudes of random sign, |a| in [low, high] (normalised units: 1 = 255 gray levels)."""
    a = rng.uniform(low, high, n) * rng.choice([-1.0, 1.0], n)
    return torch.from_numpy(a).float().view(n, 1, 1, 1)


def make_defects(clean: torch.Tensor, donors: torch.Tensor, rng: np.random.Generator,
                 kinds: tuple[str, ...] = DEFAULT_KINDS) -> tuple[torch.Tensor, torch.Tensor]:
    """Damage every crop of `clean` (B, C, k, k) with one of `kinds` drawn uniformly; `donors` (same shape,
    other places of other training images) supply the pasted pieces. Returns (damaged, class 1..len(kinds):
    the kind's place in `kinds`)."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"defect kinds must be some of {KINDS}, got {kinds}")
    n, _, k, _ = clean.shape
    label = rng.integers(1, len(kinds) + 1, n)
    out = clean.clone()
    for i, name in enumerate(kinds, start=1):
        sel = np.flatnonzero(label == i)
        if not len(sel):
            continue
        if name == "paste":
            m = paste_mask(rng, len(sel), k)
            piece = donors[sel] + _strength(rng, len(sel), 0.0, 0.1)  # the piece's own brightness, as CutPaste jitters it
            out[sel] = clean[sel] * (1 - m) + piece * m
        elif name == "scar":
            out[sel] = clean[sel] + scar_mask(rng, len(sel), k) * _strength(rng, len(sel), 0.1, 0.4)
        elif name == "blob":
            out[sel] = clean[sel] + blob_mask(rng, len(sel), k) * _strength(rng, len(sel), 0.05, 0.25)
        else:  # finish
            m = finish_mask(rng, len(sel), k)
            out[sel] = clean[sel] * (1 - m) + refinish(clean[sel], rng) * m
    return out, torch.from_numpy(label).long()
