"""Bounded recorder: NG and NOT_INSPECTED frames (with heatmaps) to a folder, oldest deleted first."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


#: The names this recorder writes; nothing else in the folder is ever deleted.
OWN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*_\d{9}_(OK|NG|NOT_INSPECTED)(_heatmap\.jpg|\.jpg|\.json)$")


class Recorder:
    def __init__(self, folder: str | Path, max_mb: float) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_mb * 2**20)

    def save(self, msg: dict[str, Any], frame: np.ndarray, anomaly_map: np.ndarray | None) -> None:
        from sclvi.edge.inference import heatmap_rgb

        stem = f"{msg['camera']}_{msg['seq']:09d}_{msg['verdict']}"  # camera ids are validated names
        Image.fromarray(frame).save(self.folder / f"{stem}.jpg", quality=90)
        if anomaly_map is not None:
            heat = heatmap_rgb(anomaly_map, frame.shape[:2])
            Image.fromarray((0.5 * frame + 0.5 * heat).astype(np.uint8)).save(self.folder / f"{stem}_heatmap.jpg", quality=85)
        (self.folder / f"{stem}.json").write_text(json.dumps(msg))
        self._trim()

    def _trim(self) -> None:
        files = sorted((p for p in self.folder.iterdir() if p.is_file() and OWN.match(p.name)), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and total > self.max_bytes:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink()
