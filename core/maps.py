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


def image_score(fused: np.ndarray) -> float:
    """The image is as anomalous as its most anomalous pixel."""
    return float(np.max(fused))
