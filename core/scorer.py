"""Score frames against the memory bank: embed -> k-NN + affinity -> pixel maps -> fuse -> image score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sclvi.affinity import patch_scores
from sclvi.bundle import ModelBundle
from sclvi.config import ScoringConfig
from sclvi.embedding import EncoderBackend, FrameEmbedder
from sclvi.geometry import TwoScaleGeometry
from sclvi.images import check_frame, normalise
from sclvi.maps import fuse_maps, image_score, pixel_map


@dataclass(frozen=True)
class FrameScore:
    score: float  # image score: max of the fused map
    anomaly_map: np.ndarray  # (S, S) fused pixel map
    small_map: np.ndarray  # (S, S) 32-px scale
    large_map: np.ndarray  # (S, S) 64-px scale


class AnomalyScorer:
    """The exact reference scoring path; faster k-NN kernels plug in behind the same outputs."""

    def __init__(self, bundle: ModelBundle, backend: EncoderBackend, scoring: ScoringConfig | None = None) -> None:
        self.bundle = bundle
        self.scoring = scoring or bundle.config.scoring
        self.geometry = TwoScaleGeometry.from_config(bundle.config.geometry)
        self.embedder = FrameEmbedder(backend, self.geometry)
        self.banks = {scale: bundle.bank(scale) for scale in ("small", "large")}
        self.size = bundle.config.geometry.image_size

    def score(self, frames: list[np.ndarray] | np.ndarray) -> list[FrameScore]:
        """Score (S, S, 3) uint8 frames (already at the model's size)."""
        batch = np.stack([normalise(check_frame(f, self.size), self.bundle.mean) for f in frames])
        codes = self.embedder.embed(batch)
        s = self.scoring
        results = []
        for i in range(len(batch)):
            maps = {}
            for scale, grid, c in (("small", self.geometry.small, codes.small[i]), ("large", self.geometry.large, codes.large[i])):
                q = c.reshape(-1, c.shape[-1])
                scores = patch_scores(q, self.banks[scale], s.eta, s.lam, s.formula, s.query_block)
                maps[scale] = pixel_map(grid, scores.reshape(grid.n, grid.n))
            fused = fuse_maps(maps["small"], maps["large"], s.scale_fusion)
            results.append(FrameScore(image_score(fused), fused, maps["small"], maps["large"]))
        return results
