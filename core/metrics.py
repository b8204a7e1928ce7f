"""Detection and segmentation metrics: image AUROC, pixel AUROC, and PRO (MVTec AD's protocol); and whether a
pretext accuracy is above chance."""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats
from sklearn.metrics import roc_auc_score, roc_curve

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 (JetPack's) has only trapz


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present (nothing to rank)."""
    labels = np.asarray(labels).astype(bool).ravel()
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64).ravel()))


def roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(bool).ravel(), np.asarray(scores).ravel())
    return fpr, tpr


def pro_auc(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to `max_fpr` (MVTec AD protocol).

    Regions are the 8-connected components of each ground-truth mask. At threshold t the PRO is the
    mean over regions of the fraction of the region scoring >= t; the FPR counts defect-free pixels
    of all images. Computed exactly from one sort: each region pixel carries weight 1/(size * R).
    """
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ")
    labels = np.zeros(masks.shape, dtype=np.int64)
    n_regions = 0
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3), dtype=int))
        labels[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += n
    normal = ~masks
    if n_regions == 0 or not normal.any():
        return float("nan")
    sizes = np.bincount(labels.ravel(), minlength=n_regions + 1).astype(np.float64)
    flat_labels = labels.ravel()
    pro_w = np.where(flat_labels > 0, 1.0 / (sizes[flat_labels] * n_regions), 0.0)
    fpr_w = normal.ravel() / normal.sum()
    scores = maps.ravel()
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    pro = np.cumsum(pro_w[order])
    fpr = np.cumsum(fpr_w[order])
    last = np.r_[s[1:] != s[:-1], True]  # one point per distinct threshold
    fpr = np.r_[0.0, fpr[last]]
    pro = np.r_[0.0, pro[last]]
    stop = np.searchsorted(fpr, max_fpr, side="right")
    x, y = fpr[:stop], pro[:stop]
    if stop < len(fpr):  # interpolate the curve at exactly max_fpr
        x0, x1, y0, y1 = fpr[stop - 1], fpr[stop], pro[stop - 1], pro[stop]
        y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0) if x1 > x0 else y1
        x, y = np.r_[x, max_fpr], np.r_[y, y_end]
    return float(_trapezoid(y, x) / max_fpr)


def above_chance(accuracy: float, n: int, chance: float, alpha: float = 0.01) -> tuple[bool, float]:
    """(accuracy significantly above chance?, one-sided binomial p-value) for `n` independent trials.

    Why: 0.10 against a chance of 0.083 on 256 held-out pairs is noise, not learning; a user reading the
    pretext accuracy needs to be told which it is."""
    hits = int(round(accuracy * n))
    p = float(stats.binomtest(hits, n, chance, alternative="greater").pvalue)
    return p < alpha, p
