"""Decide OK / NG against the calibrated threshold and outline defect regions in frame pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from sclvi.edge.messages import Reason, Verdict


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    regions: list[dict[str, Any]]
    reason: Reason | None = None


def defect_regions(anomaly_map: np.ndarray, pixel_threshold: float, frame_hw: tuple[int, int], max_regions: int = 32) -> list[dict[str, Any]]:
    """Connected components of map > threshold: box [x0, y0, x1, y1] and area in frame pixels, peak score."""
    mask = anomaly_map > pixel_threshold
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    if n == 0:
        return []
    sy, sx = frame_hw[0] / anomaly_map.shape[0], frame_hw[1] / anomaly_map.shape[1]
    idx = np.arange(1, n + 1)
    peaks = ndimage.maximum(anomaly_map, labels, idx)
    areas = ndimage.sum_labels(np.ones_like(anomaly_map), labels, idx)
    regions = []
    for k, sl in enumerate(ndimage.find_objects(labels)):
        ys, xs = sl
        regions.append({
            "box": [int(xs.start * sx), int(ys.start * sy), int(np.ceil(xs.stop * sx)), int(np.ceil(ys.stop * sy))],
            "area": int(round(areas[k] * sx * sy)),
            "peak": float(peaks[k]),
        })
    regions.sort(key=lambda r: -r["peak"])
    return regions[:max_regions]


def decide(score: float, anomaly_map: np.ndarray, image_threshold: float, pixel_threshold: float, frame_hw: tuple[int, int]) -> Decision:
    """OK / NG, fail-closed: `NaN > threshold` is False, so a NaN anywhere (score, map, either threshold)
    would pass the part; it is NOT_INSPECTED (invalid_score) instead, which the PLC rejects."""
    if not (np.isfinite(score) and np.isfinite(image_threshold) and np.isfinite(pixel_threshold)
            and np.isfinite(anomaly_map).all()):
        return Decision(Verdict.NOT_INSPECTED, [], Reason.INVALID_SCORE)
    verdict = Verdict.NG if score > image_threshold else Verdict.OK
    regions = defect_regions(anomaly_map, pixel_threshold, frame_hw) if verdict is Verdict.NG else []
    return Decision(verdict, regions)
