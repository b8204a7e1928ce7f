"""Threshold calibration on held-out defect-free images.

Image threshold: the (1 - target false-reject rate) quantile of the good images' scores, so about that
fraction of good parts is rejected. Pixel threshold: the (1 - pixel_fpr) quantile of the good images'
pixel scores, used to outline defect regions. Both are stored in the bundle with the statistics they
came from, plus a histogram plot (good vs defective when a labelled set is given).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sclvi.bundle import ModelBundle, set_calibration
from sclvi.embedding import EncoderBackend
from sclvi.errors import DataError
from sclvi.images import IMAGE_SUFFIXES
from sclvi.roi import read_input
from sclvi.scorer import AnomalyScorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    image_threshold: float
    pixel_threshold: float
    target_frr: float
    pixel_fpr: float
    n_good: int
    good_scores: dict[str, float]  # min, p50, p99, max, mean, std
    created: str


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"calibration folder {folder} does not exist")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def required_images(target_frr: float) -> int:
    """At least one expected false reject among the good images: fewer cannot resolve the rate."""
    return math.ceil(1.0 / target_frr)


def score_images(scorer: AnomalyScorer, images: list[Path], desc: str) -> tuple[np.ndarray, np.ndarray]:
    scores, pixels = [], []
    for p in tqdm(images, desc=desc, unit="img"):
        r = scorer.score([read_input(p, scorer.bundle.config.geometry)])[0]
        scores.append(r.score)
        pixels.append(r.anomaly_map[::4, ::4].ravel())  # a strided sample keeps memory flat
    return np.array(scores), np.concatenate(pixels)


def calibrate(
    bundle: ModelBundle,
    backend: EncoderBackend,
    good: list[Path],
    target_frr: float = 0.005,
    pixel_fpr: float = 0.001,
    defective: list[Path] | None = None,
    plot: Path | None = None,
) -> Calibration:
    need = required_images(target_frr)
    if len(good) < need:
        raise DataError(
            f"{len(good)} good images cannot calibrate a {100 * target_frr:g}% false-reject rate: it needs at least "
            f"{need}. Add held-out defect-free images or raise --target-frr (e.g. {1 / len(good):.3g})."
        )
    scorer = AnomalyScorer(bundle, backend)
    scores, pixels = score_images(scorer, good, "calibrate (good)")
    image_t = float(np.quantile(scores, 1.0 - target_frr, method="higher"))
    pixel_t = float(np.quantile(pixels, 1.0 - pixel_fpr))
    stats = {"min": float(scores.min()), "p50": float(np.median(scores)), "p99": float(np.quantile(scores, 0.99)),
             "max": float(scores.max()), "mean": float(scores.mean()), "std": float(scores.std())}
    cal = Calibration(image_t, pixel_t, target_frr, pixel_fpr, len(good), stats,
                      datetime.now(timezone.utc).isoformat(timespec="seconds"))
    bad_scores = score_images(scorer, defective, "calibrate (defective)")[0] if defective else None
    record = asdict(cal)
    if bad_scores is not None:
        record["defective_caught"] = float((bad_scores > image_t).mean())
    set_calibration(bundle, record)
    if plot is not None:
        save_histogram(plot, scores, bad_scores, image_t, target_frr)
    log.info("image threshold %.5g (target FRR %g on %d good images), pixel threshold %.5g", image_t, target_frr, len(good), pixel_t)
    return cal


def save_histogram(path: Path, good: np.ndarray, bad: np.ndarray | None, threshold: float, frr: float) -> None:
    from sclvi.plots import plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    hi = max(good.max(), bad.max() if bad is not None else 0) * 1.05
    bins = np.linspace(0, hi, 50)
    ax.hist(good, bins=bins, alpha=0.6, label=f"good ({len(good)})", color="tab:green")
    if bad is not None:
        ax.hist(bad, bins=bins, alpha=0.6, label=f"defective ({len(bad)}, {100 * (bad > threshold).mean():.0f}% caught)", color="tab:red")
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.3g} (FRR {100 * frr:g}%)")
    ax.set_xlabel("image score")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
