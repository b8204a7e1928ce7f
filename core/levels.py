"""Frame-level normalisation: a frame's map divided by the score level that defect-free frames like it get.

Why: the k-NN score of a normal patch depends on how densely the bank covers its kind of image. A variant that
is rare among the training images (on magnetic_tile: the smallest tiles, upscaled most by the squash to 256 px,
score about three times the largest on good parts) scores high all over, and its good parts then outrank small
defects on common variants; in the pixel ranking its every pixel counts against the defects. The bank measures
this itself: each of a seeded sample of its images is scored as a test frame against the bank without it
(leave-one-out), and the median of that map is the normal level of frames that retrieve it. At test time a
frame's expected level is the mean level of the bank images it retrieved (core/retrieval.py), relative to the
bank's median level; the fused map is divided by that factor to the power `bank.level_norm` (a density
correction in the spirit of the local outlier factor, at image level). A frame of a common variant is left
almost as it was; the factor is clipped to [1/4, 4] so no single frame's map is rescaled without bound.

It needs image retrieval (a bank of whole images, K below their count): without it every frame searches the
same bank and the factor would be 1 for all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from sclvi.errors import BundleError

if TYPE_CHECKING:
    from sclvi.scorer import AnomalyScorer

log = logging.getLogger(__name__)

#: Bank images scored leave-one-out at bank build (a seeded sample: the cost is one frame's scoring each).
LEVEL_IMAGES = 256
#: How far one frame's map may be rescaled either way.
FACTOR_CLIP = 4.0


@dataclass(frozen=True)
class BankLevels:
    """The leave-one-out normal level of a sample of the bank's images."""

    images: np.ndarray  # (n,) bank image indices that carry a level, ascending
    levels: np.ndarray  # (n,) their leave-one-out median fused map
    bank_images: int  # images in the bank they were measured on (a rebuilt bank invalidates them)

    @property
    def reference(self) -> float:
        return float(np.median(self.levels))

    def factor(self, images: np.ndarray) -> float:
        """A frame searched among bank `images`: the mean level of those that carry one, over the bank's median
        level (1 when none carries a level), clipped to [1/FACTOR_CLIP, FACTOR_CLIP]."""
        has = self.images[np.isin(self.images, images, assume_unique=True)]
        if not len(has):
            return 1.0
        mean = float(self.levels[np.searchsorted(self.images, has)].mean())
        return float(np.clip(mean / self.reference, 1 / FACTOR_CLIP, FACTOR_CLIP))

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images.tolist(), "levels": [float(v) for v in self.levels], "bank_images": self.bank_images}

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> "BankLevels":
        try:
            images = np.asarray(entry["images"], dtype=np.int64)
            levels = np.asarray(entry["levels"], dtype=np.float64)
            bank_images = int(entry["bank_images"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bundle.json `levels` is malformed ({exc}): rebuild the bank with `sclvi bank`") from None
        if (images.ndim != 1 or images.shape != levels.shape or not len(images) or (np.diff(images) <= 0).any()
                or images[0] < 0 or images[-1] >= bank_images or not np.isfinite(levels).all() or (levels <= 0).any()):
            raise BundleError("bundle.json `levels` is inconsistent (indices outside the bank, or levels that are not "
                              "finite and positive): rebuild the bank with `sclvi bank`")
        return cls(images, levels, bank_images)


def measure_levels(scorer: AnomalyScorer, seed: int) -> BankLevels:
    """Score a seeded sample of up to LEVEL_IMAGES bank images leave-one-out (each against the bank without it,
    through the scorer's own retrieval and k-NN kernels) and keep each map's median."""
    n = scorer.bank_image_count()
    if n is None or n < 2:
        raise ValueError("bank levels need a bank of at least 2 whole images")
    pick = np.arange(n) if n <= LEVEL_IMAGES else np.sort(np.random.default_rng(seed).choice(n, LEVEL_IMAGES, replace=False))
    levels = np.empty(len(pick))
    for j, i in enumerate(tqdm(pick, desc="bank levels (leave-one-out)", unit="img")):
        small, large = scorer.bank_image_codes(int(i))
        levels[j] = float(np.median(scorer.score_codes(small, large, exclude_image=int(i)).anomaly_map))
    floor = np.finfo(np.float32).tiny
    if (levels <= floor).any():  # an image duplicated in the bank scores 0 against its twin: no level to divide by
        log.info("bank levels: %d of %d images have an exact duplicate in the bank (level 0, dropped)",
                 int((levels <= floor).sum()), len(levels))
        pick, levels = pick[levels > floor], levels[levels > floor]
    if not len(pick):
        raise ValueError("every sampled bank image has an exact duplicate in the bank: no normal level to measure")
    log.info("bank levels: %d images, median %.4g, 5-95 %% %.3g-%.3g x the median", len(pick), np.median(levels),
             *(np.percentile(levels, [5, 95]) / np.median(levels)))
    return BankLevels(pick.astype(np.int64), levels, n)
