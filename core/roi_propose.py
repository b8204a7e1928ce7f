"""Propose a region of interest from good images: the bounding box of the part, printed for the user to
confirm (`sclvi roi DATA`), never applied silently.

The part is what stands out from the background in the mean of the training frames: the background colour
is taken from the frame border, pixels far from it (Otsu threshold on the colour distance) are the part.
Frames with no separable background (a texture that fills the view) get the whole frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from sclvi.config import GeometryConfig
from sclvi.errors import DataError
from sclvi.images import read_rgb

#: Border (fraction of the shorter side) the background colour is measured on.
BORDER = 0.04
#: The part must cover less than this fraction of the frame for a crop to be worth it.
MAX_COVER = 0.85
#: Blobs smaller than this fraction of the largest are specks, not the part.
MIN_BLOB = 0.05


@dataclass(frozen=True)
class RoiProposal:
    frame: tuple[int, int]  # (width, height)
    roi: tuple[int, int, int, int]  # (x, y, width, height), tiled exactly at `scale`
    part_box: tuple[int, int, int, int] | None  # the raw bounding box found (None: no separable part)
    cover: float  # fraction of the frame the roi covers
    mean: np.ndarray = field(repr=False, compare=False)  # the mean training frame it was found on (the figure)


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256)
    p = hist / max(1, hist.sum())
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - m0) ** 2 / (w0 * (1 - w0))
    return float(centers[np.nanargmax(between)])


def part_box(mean: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of what differs from the border colour in an (H, W, 3) mean frame, or None."""
    h, w = mean.shape[:2]
    b = max(1, int(BORDER * min(h, w)))
    border = np.concatenate([mean[:b].reshape(-1, 3), mean[-b:].reshape(-1, 3),
                             mean[:, :b].reshape(-1, 3), mean[:, -b:].reshape(-1, 3)])
    dist = np.linalg.norm(mean - np.median(border, axis=0), axis=2)
    noise = float(np.percentile(np.linalg.norm(border - np.median(border, axis=0), axis=1), 95))
    thr = max(_otsu(dist), 2 * noise, 8.0)  # 8 gray levels: below that a "part" is lighting falloff
    mask = _without_specks(dist > thr)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if mask.mean() < 0.002 or not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def _without_specks(mask: np.ndarray) -> np.ndarray:
    """The mask without isolated pixels and small blobs (dust, a noise outlier, a hot pixel): one of them far
    from the part would stretch its bounding box. Keeps every blob of at least `MIN_BLOB` of the largest, so a
    part in several pieces stays whole."""
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return np.isin(labels, 1 + np.flatnonzero(sizes >= MIN_BLOB * sizes.max()))


def snap_span(start: int, length: int, limit: int, scale: float, g: GeometryConfig,
              min_side: int = 0) -> tuple[int, int]:
    """(start, length) of [start, start+length) grown about its centre to the nearest length whose scaled size
    `g.tiles` and is at least `min_side`, inside [0, limit); shrunk to the largest that fits when the frame is
    too small."""
    side = max(math.ceil(length * scale), min_side)
    cap = math.floor(limit * scale)
    while side <= cap and not g.tiles(side):
        side += 1
    if side > cap:
        side = g.nearest_tiling(cap)
    if side < min_side:
        raise DataError(f"a frame side of {limit} px at scale {scale:g} holds no input side of at least the {min_side} "
                        "px training needs (that the patch strides tile): raise --scale")
    raw = g.roi_side(side, scale, limit)
    if raw is None:
        raise ValueError(f"no roi side maps to {side} px at scale {scale:g}")
    new_start = min(max(0, start + (length - raw) // 2), limit - raw)
    return new_start, raw


def propose_roi(images: list[Path], geometry: GeometryConfig, scale: float = 1.0, margin: int = 16,
                max_images: int = 32, min_side: int = 0) -> RoiProposal:
    """An roi around the part in up to `max_images` training frames, with `margin` px around it, tiled at
    `scale`, each side at least `min_side` px at that scale (what training needs: `pretext.grid_span`)."""
    frames = np.stack([read_rgb(p, None) for p in images[:max_images]]).astype(np.float32)
    mean = frames.mean(axis=0)
    h, w = mean.shape[:2]
    box = part_box(mean)
    if box is None or (box[2] * box[3]) / (w * h) > MAX_COVER:
        x0, y0, bw, bh = 0, 0, w, h
    else:
        x0, y0 = max(0, box[0] - margin), max(0, box[1] - margin)
        bw, bh = min(w, box[0] + box[2] + margin) - x0, min(h, box[1] + box[3] + margin) - y0
    g = geometry.model_copy(update={"frame": None, "roi": None})
    x, rw = snap_span(x0, bw, w, scale, g, min_side)
    y, rh = snap_span(y0, bh, h, scale, g, min_side)
    return RoiProposal((w, h), (x, y, rw, rh), box, (rw * rh) / (w * h), mean)


def save_roi_figure(path: Path, proposal: RoiProposal) -> None:
    """The mean training frame with the proposed roi drawn on it (what the user confirms)."""
    from sclvi.plots import plt

    fig, ax = plt.subplots(figsize=(6, 6 * proposal.frame[1] / proposal.frame[0]))
    ax.imshow(proposal.mean.astype(np.uint8))
    x, y, w, h = proposal.roi
    ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, color="lime", lw=2, label=f"roi {list(proposal.roi)}"))
    if proposal.part_box is not None:
        bx, by, bw, bh = proposal.part_box
        ax.add_patch(plt.Rectangle((bx, by), bw, bh, fill=False, color="orange", lw=1, ls="--", label="part"))
    ax.legend(loc="lower right", fontsize=8)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
