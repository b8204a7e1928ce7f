"""Evaluate a bundle on an MVTec-layout data set: image AUROC, pixel AUROC, PRO, per defect type."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sclvi.bundle import ModelBundle
from sclvi.config import ScoringConfig
from sclvi.dataset import MVTecDataset
from sclvi.embedding import EncoderBackend
from sclvi.errors import BundleError
from sclvi.images import read_mask, read_rgb
from sclvi.metrics import auroc, pro_auc, roc
from sclvi.plots import save_overlay, save_roc
from sclvi.scorer import AnomalyScorer

log = logging.getLogger(__name__)


def _metrics(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None, maps: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = {"n": int(len(labels)), "image_auroc": auroc(labels, scores)}
    if masks is not None and maps is not None:
        out["pixel_auroc"] = auroc(masks, maps)
        out["pro"] = pro_auc(masks, maps)
    return out


def evaluate(
    bundle: ModelBundle,
    dataset: MVTecDataset,
    backend: EncoderBackend,
    out_dir: str | Path,
    scoring: ScoringConfig | None = None,
    n_overlays: int = 6,
    batch: int = 4,
) -> dict[str, Any]:
    """Score every test image, compute the metrics, write metrics.json, roc.png and overlays."""
    if not bundle.has_bank():
        raise BundleError(f"bundle {bundle.path} has no memory bank: train it with `sclvi train` first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scorer = AnomalyScorer(bundle, backend, scoring)
    size = bundle.config.geometry.image_size
    items = dataset.test
    with_masks = dataset.has_masks
    scores = np.empty(len(items))
    maps = np.empty((len(items), size, size), dtype=np.float32)
    t0 = time.perf_counter()
    with tqdm(total=len(items), desc="evaluate", unit="img") as bar:
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            results = scorer.score([read_rgb(t.path, size) for t in chunk])
            for j, r in enumerate(results):
                scores[start + j] = r.score
                maps[start + j] = r.anomaly_map
            bar.update(len(chunk))
    seconds = (time.perf_counter() - t0) / len(items)
    labels = np.array([t.is_anomalous for t in items])
    defects = np.array([t.defect for t in items])
    masks = None
    if with_masks:
        masks = np.stack([read_mask(t.mask, size) if t.mask else np.zeros((size, size), bool) for t in items])
    report: dict[str, Any] = {
        "dataset": str(dataset.root),
        "bundle": str(bundle.path),
        "backend": getattr(backend, "name", type(backend).__name__),
        "scoring": (scoring or bundle.config.scoring).model_dump(),
        "image_size": size,
        "seconds_per_image": seconds,
        **_metrics(labels, scores, masks, maps if with_masks else None),
        "per_defect": {},
    }
    good = defects == "good"
    for defect in dataset.defect_types:
        sel = good | (defects == defect)
        report["per_defect"][defect] = _metrics(
            labels[sel], scores[sel], masks[sel] if masks is not None else None, maps[sel] if with_masks else None
        )
    report["image_scores"] = [
        {"path": str(t.path), "defect": t.defect, "score": float(s)} for t, s in zip(items, scores)
    ]
    (out / "metrics.json").write_text(json.dumps(_nan_to_none(report), indent=2))
    fpr, tpr = roc(labels, scores)
    save_roc(out / "roc.png", {"image": (fpr, tpr, report["image_auroc"])}, f"{dataset.root.name}: image-level ROC")
    _write_overlays(out / "overlays", items, maps, scores, size, n_overlays, masks)
    return report


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN: an undefined metric (e.g. no masks) is written as null."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _write_overlays(folder: Path, items: list, maps: np.ndarray, scores: np.ndarray, size: int, n: int, masks) -> None:
    """A few good and a few defective examples, sharing one colour scale so they compare."""
    if n <= 0:
        return
    vmax = float(np.percentile(maps, 99.9))
    bad = [i for i, t in enumerate(items) if t.is_anomalous]
    good = [i for i, t in enumerate(items) if not t.is_anomalous]
    picks = bad[:: max(1, len(bad) // max(1, n - n // 3))][: n - n // 3] + good[: n // 3]
    for i in picks:
        t = items[i]
        save_overlay(
            folder / f"{t.defect}_{t.path.stem}.png",
            read_rgb(t.path, size),
            maps[i],
            masks[i] if masks is not None else None,
            f"{t.defect}/{t.path.name}  score {scores[i]:.4g}",
            vmax,
        )
