"""Counters shared between processes without locks: one row per process, summed when read."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np

from sclvi.edge.messages import Reason

NAMES = (
    "frames_grabbed", "fetch_timeouts", "incomplete_buffers", "wrong_size", "camera_reconnects", "ring_full",
    "verdict_ok", "verdict_ng", "not_inspected", *(f"nis_{r.value}" for r in Reason), "late_results",
    "inference_errors", "sent", "send_failures", "resends", "acks", "bad_acks", "late_verdicts", "pending",
    "worker_restarts", "acquisition_restarts", "publisher_restarts", "stalls",
)
INDEX = {n: i for i, n in enumerate(NAMES)}


class Counters:
    def __init__(self, rows: int, ctx: Any = mp) -> None:
        self.rows = rows
        self.array = ctx.Array("q", rows * len(NAMES), lock=False)

    def view(self) -> np.ndarray:
        return np.frombuffer(self.array, dtype=np.int64).reshape(self.rows, len(NAMES))

    def add(self, row: int, name: str, n: int = 1) -> None:
        self.view()[row, INDEX[name]] += n

    def set(self, row: int, name: str, value: int) -> None:
        self.view()[row, INDEX[name]] = value

    def totals(self) -> dict[str, int]:
        return dict(zip(NAMES, (int(v) for v in self.view().sum(axis=0))))
