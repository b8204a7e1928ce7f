"""Drift watch: are good parts still scoring like the good parts the thresholds were calibrated on?

Why: a lamp that ages, a lens that gets dirty or a new material batch moves every part's score up (or
the camera's exposure moves it down) long before parts start failing; a fixed threshold then rejects
good parts by the hundred, or lets defects through. The calibration (calib/calibrate.py) records the
good parts' score distribution (p50, p99); this compares the median score of the last `window` OK parts
with it, in units of the calibration's p50 -> p99 spread, and raises an alarm past `limit`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Reference:
    """The calibration's good-part score median and its p50 -> p99 spread."""

    p50: float
    spread: float

    @classmethod
    def from_calibration(cls, calibration: dict[str, Any] | None) -> "Reference | None":
        stats = (calibration or {}).get("good_scores") or {}
        p50, p99 = stats.get("p50"), stats.get("p99")
        if p50 is None or p99 is None or not np.isfinite([p50, p99]).all() or p99 <= p50:
            return None  # uncalibrated bundle: nothing to compare with
        return cls(float(p50), float(p99 - p50))


class DriftWatch:
    """Median of the last `window` OK-part scores against the calibration; `shift` is in spreads."""

    def __init__(self, reference: Reference | None, window: int = 200, limit: float = 1.0) -> None:
        self.reference, self.limit = reference, limit
        self.scores: deque[float] = deque(maxlen=window)

    def add(self, verdict: str, score: float | None) -> None:
        if verdict == "OK" and score is not None and np.isfinite(score):
            self.scores.append(float(score))

    def status(self) -> dict[str, Any] | None:
        """None until the window is full (or without a calibration); else the figures and `alarm`."""
        if self.reference is None or len(self.scores) < (self.scores.maxlen or 0):
            return None
        median = float(np.median(self.scores))
        shift = (median - self.reference.p50) / self.reference.spread
        return {"window": len(self.scores), "median": median, "calibration_p50": self.reference.p50,
                "shift": shift, "alarm": abs(shift) > self.limit}

    def alarm(self, s: dict[str, Any] | None = None) -> str | None:
        """The alarm text for `s` (default: the current status), None when there is no alarm."""
        s = self.status() if s is None else s
        if s is None or not s["alarm"]:
            return None
        return (f"score drift: median of the last {s['window']} OK parts {s['median']:.4g} vs {s['calibration_p50']:.4g} "
                f"at calibration ({s['shift']:+.2f} of the calibration's p50-p99 spread): check lighting, lens and "
                "material, then recalibrate")
