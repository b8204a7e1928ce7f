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
from sclvi.config import GeometryConfig, ScoringConfig
from sclvi.dataset import MVTecDataset
from sclvi.embedding import EncoderBackend, FrameCodes
from sclvi.errors import BundleError
from sclvi.roi import read_input, read_input_mask
from sclvi.metrics import auroc, pro_auc, roc
from sclvi.plots import save_overlay, save_roc
from sclvi.scorer import AnomalyScorer

log = logging.getLogger(__name__)


def _metrics(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None, maps: np.ndarray | None,
             labelled: np.ndarray) -> dict[str, Any]:
    """Image metrics over every image; pixel metrics over the `labelled` ones (their masks are known; with no
    defective one among them, every pixel metric is NaN: nothing to rank)."""
    out: dict[str, Any] = {"n": int(len(labels)), "image_auroc": auroc(labels, scores)}
    if masks is not None and maps is not None:
        labels, masks, maps = labels[labelled], masks[labelled], maps[labelled]
        out["pixel_auroc"] = auroc(masks, maps)
        out["pro"] = pro_auc(masks, maps)
        out["pixel_auroc_vs_good"] = pixel_auroc_vs_good(labels, masks, maps)
    return out


def pixel_auroc_vs_good(labels: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> float:
    """Pixel AUROC of the defect pixels against the pixels of good parts only.

    Why: the plain pixel AUROC also counts every unmarked pixel of a defective part as normal. When those score
    high (the map spilling far beyond the marked defect, or a defective part that differs from good ones all
    over) the two figures part; the gap says how much of a low pixel AUROC is that, and how much is the map
    missing defects on a good part's surface."""
    good = ~np.asarray(labels, dtype=bool)
    masks = np.asarray(masks, dtype=bool)
    if not good.any() or not masks.any():
        return float("nan")
    defect_scores = np.asarray(maps)[masks]
    good_scores = np.asarray(maps)[good].ravel()
    return auroc(np.r_[np.ones(len(defect_scores), bool), np.zeros(len(good_scores), bool)],
                 np.r_[defect_scores, good_scores])


def embed_test_set(bundle: ModelBundle, dataset: MVTecDataset, backend: EncoderBackend, batch: int = 4) -> tuple[FrameCodes, float]:
    """Codes of every test image (both scales) and the embedding time per image."""
    scorer = AnomalyScorer(bundle, backend)  # embeds only: its k-NN (and banks) are never built
    geometry = bundle.config.geometry
    parts = []
    t0 = time.perf_counter()
    for start in tqdm(range(0, len(dataset.test), batch), desc="embed test set", unit="batch"):
        parts.append(scorer.embed([read_input(t.path, geometry) for t in dataset.test[start : start + batch]]))
    seconds = (time.perf_counter() - t0) / max(1, len(dataset.test))
    return FrameCodes(np.concatenate([p.small for p in parts]), np.concatenate([p.large for p in parts])), seconds


def score_test_set(
    bundle: ModelBundle,
    codes: FrameCodes,
    scoring: ScoringConfig,
    banks: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """(image scores, fused maps, seconds per image) for embedded test images under one scoring config."""
    scorer = AnomalyScorer(bundle, None, scoring, banks=banks)
    n = len(codes.small)
    scores = np.empty(n)
    maps = np.empty((n, *bundle.config.geometry.input_hw), dtype=np.float32)
    if n:
        scorer.score_codes(codes.small[0], codes.large[0])  # warm-up: JIT compilation is not scoring time
    t0 = time.perf_counter()
    for i in tqdm(range(n), desc="score", unit="img", mininterval=1.0):
        r = scorer.score_codes(codes.small[i], codes.large[i])
        scores[i], maps[i] = r.score, r.anomaly_map
    return scores, maps, (time.perf_counter() - t0) / max(1, n)


def test_masks(dataset: MVTecDataset, geometry: GeometryConfig) -> np.ndarray | None:
    """Ground-truth masks of all test images on the model input (zeros for good ones), or None without masks.

    A defective image without a mask also gets zeros here, and `metrics_report` leaves it out of the pixel
    metrics (its defect pixels are unknown, not normal); a warning names how many."""
    if not dataset.has_masks:
        return None
    if dataset.unmasked:
        log.warning("pixel metrics leave out %s defective test image(s) without a mask (%s): their defect pixels "
                    "are unknown; image metrics count them", sum(dataset.unmasked.values()),
                    ", ".join(f"{d}: {n}" for d, n in sorted(dataset.unmasked.items())))
    return np.stack([read_input_mask(t.mask, geometry) if t.mask else np.zeros(geometry.input_hw, bool)
                     for t in dataset.test])


def metrics_report(dataset: MVTecDataset, scores: np.ndarray, maps: np.ndarray, masks: np.ndarray | None) -> dict[str, Any]:
    """Overall and per-defect-type metrics (each defect type against all good images)."""
    items = dataset.test
    labels = np.array([t.is_anomalous for t in items])
    defects = np.array([t.defect for t in items])
    labelled = np.array([t.pixel_labelled for t in items])
    with_maps = masks is not None
    report: dict[str, Any] = {**_metrics(labels, scores, masks, maps if with_maps else None, labelled),
                              "per_defect": {}}
    if with_maps and dataset.unmasked:
        report["pixel_metrics_leave_out"] = dict(sorted(dataset.unmasked.items()))
    good = defects == "good"
    for defect in dataset.defect_types:
        sel = good | (defects == defect)
        report["per_defect"][defect] = _metrics(
            labels[sel], scores[sel], masks[sel] if with_maps else None, maps[sel] if with_maps else None,
            labelled[sel],
        )
    return report


def evaluate(
    bundle: ModelBundle,
    dataset: MVTecDataset,
    backend: EncoderBackend,
    out_dir: str | Path,
    scoring: ScoringConfig | None = None,
    n_overlays: int = 6,
    floor: bool = False,
) -> dict[str, Any]:
    """Score every test image, compute the metrics, write metrics.json, roc.png and overlays; with `floor`, the
    raw-pixel floor on the same parts beside them (`floor_report`)."""
    if not bundle.has_bank():
        raise BundleError(f"bundle {bundle.path} has no memory bank: train it with `sclvi train` first")
    scoring = scoring or bundle.config.scoring
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geometry = bundle.config.geometry
    codes, embed_s = embed_test_set(bundle, dataset, backend)
    scores, maps, score_s = score_test_set(bundle, codes, scoring)
    masks = test_masks(dataset, geometry)
    report: dict[str, Any] = {
        "dataset": str(dataset.root),
        "bundle": str(bundle.path),
        "backend": getattr(backend, "name", type(backend).__name__),
        "scoring": scoring.model_dump(),
        "geometry": geometry.describe(),
        "seconds_per_image": embed_s + score_s,
        **metrics_report(dataset, scores, maps, masks),
    }
    labels = np.array([t.is_anomalous for t in dataset.test])
    curves = {"model": (*roc(labels, scores), report["image_auroc"])}
    if floor:
        report["floor"], floor_scores = floor_report(bundle, dataset, scoring, masks)
        if floor_scores is not None:
            report["learning_adds_image_auroc"] = report["image_auroc"] - report["floor"]["image_auroc"]
            curves["raw-pixel floor"] = (*roc(labels, floor_scores), report["floor"]["image_auroc"])
    report["image_scores"] = [
        {"path": str(t.path), "defect": t.defect, "score": float(s)} for t, s in zip(dataset.test, scores)
    ]
    (out / "metrics.json").write_text(json.dumps(_nan_to_none(report), indent=2))
    save_roc(out / "roc.png", curves, f"{dataset.root.name}: image-level ROC")
    write_overlays(out / "overlays", dataset.test, maps, scores, geometry, n_overlays, masks)
    return report


def floor_report(bundle: ModelBundle, dataset: MVTecDataset, scoring: ScoringConfig,
                 masks: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray | None]:
    """The raw-pixel floor (sclvi.floors: no network, no training) on the same test parts, training images,
    geometry and scoring as the bundle: what this set gives with no learning, so a user sees on their own parts
    what the model adds. Returns its metrics and image scores; (reason, None) where the geometry has no
    raw-pixel floor (a patch, stride or size that does not fall on its patch/8-px blocks)."""
    from sclvi.floors import misfit, raw_pixel_floor
    from sclvi.memory_bank import bank_images

    cfg = bundle.config.model_copy(update={"scoring": scoring})
    g = cfg.geometry
    why = misfit(g.small_patch, g.small_stride, *g.input_hw)
    if why:
        log.warning("no raw-pixel floor for this bundle: %s", why)
        return {"kind": "raw-pixel patch 1-NN", "unavailable": why}, None
    scores, maps, seconds = raw_pixel_floor(cfg, dataset, bank_images(dataset.train, cfg.bank.max_images, cfg.bank.seed))
    return {"kind": "raw-pixel patch 1-NN", "seconds_per_image": seconds,
            **metrics_report(dataset, scores, maps, masks)}, scores


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN: an undefined metric (e.g. no masks) is written as null."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_overlays(folder: Path, items: list, maps: np.ndarray, scores: np.ndarray, geometry: GeometryConfig, n: int,
                   masks: np.ndarray | None) -> None:
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
            read_input(t.path, geometry),
            maps[i],
            masks[i] if masks is not None else None,
            f"{t.defect}/{t.path.name}  score {scores[i]:.4g}",
            vmax,
        )
