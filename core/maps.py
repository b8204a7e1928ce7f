"""From patch scores to pixel maps (eq. 7), fusion of the two scales, and the image score."""

from __future__ import annotations

import numpy as np

from sclvi.geometry import PatchGrid


def pixel_map(grid: PatchGrid, scores: np.ndarray) -> np.ndarray:
    """Each pixel's score is the mean score of the patches that cover it (eq. 7)."""
    cover = grid.coverage
    if (cover == 0).any():  # impossible for a validated geometry; never return silent zeros
        raise ValueError(f"{grid} leaves pixels uncovered")
    return (grid.spread(scores) / cover).astype(np.float32)


def fuse_maps(small: np.ndarray, large: np.ndarray, mode: str = "product") -> np.ndarray:
    """Combine the 32-px and 64-px maps: element-wise product (Patch SVDD's choice) or sum."""
    if small.shape != large.shape:
        raise ValueError(f"maps differ in shape: {small.shape} vs {large.shape}")
    if mode == "product":
        return small * large
    if mode == "sum":
        return small + large
    raise ValueError(f"unknown scale fusion {mode!r} (product or sum)")


def smooth_map(fused: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of the fused map (as PatchCore and anomalib do): one noisy patch no longer sets
    the image score, a defect that spans several patches still does. sigma 0 returns the map unchanged."""
    if sigma <= 0:
        return fused
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(fused, sigma, mode="nearest").astype(fused.dtype, copy=False)


def image_score(fused: np.ndarray, top: int = 1) -> float:
    """The mean of the map's `top` highest pixels (1: the paper, the image is as anomalous as its most anomalous
    pixel). `scoring.image_score: top-patch` takes one small patch's worth (top_pixels), wherever they lie: a part
    that is off over a wide area or in many places adds up instead of counting once."""
    flat = np.asarray(fused).ravel()
    if top <= 1:
        return float(flat.max())
    top = min(top, flat.size)
    return float(np.partition(flat, flat.size - top)[flat.size - top:].mean(dtype=np.float64))


def top_pixels(image_score_kind: str, small_patch: int) -> int:
    """How many of a map's highest pixels make the image score (`scoring.image_score`)."""
    if image_score_kind == "max":
        return 1
    if image_score_kind == "top-patch":
        return small_patch * small_patch
    raise ValueError(f"unknown scoring.image_score {image_score_kind!r} (max or top-patch)")
