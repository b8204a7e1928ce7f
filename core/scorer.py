"""Score frames against the memory bank: embed -> k-NN + affinity -> pixel maps -> fuse -> image score."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from sclvi.bundle import ModelBundle
from sclvi.config import ScoringConfig
from sclvi.embedding import EncoderBackend, FrameCodes, FrameEmbedder
from sclvi.geometry import TwoScaleGeometry
from sclvi.images import check_frame
from sclvi.roi import FrameMapping
from sclvi.knn import PatchScorer, choose_kernel, make_patch_scorer
from sclvi.knn.buckets import grid_positions
from sclvi.maps import fuse_maps, image_score, pixel_map, smooth_map, top_pixels
from sclvi.levels import BankLevels
from sclvi.retrieval import ImageRetrieval, image_rows, whole_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameScore:
    score: float  # image score: max of the fused map, or the mean of its top patch's worth (scoring.image_score)
    anomaly_map: np.ndarray  # (H, W) fused pixel map over the model input
    small_map: np.ndarray  # (H, W) 32-px scale
    large_map: np.ndarray  # (H, W) 64-px scale


def resolve_scoring(scoring: ScoringConfig, bundle: ModelBundle) -> ScoringConfig:
    """`position_window: auto` -> the window the bundle's memory bank measured (None if not aligned or
    never measured)."""
    if scoring.position_window != "auto":
        return scoring
    window = bundle.manifest.get("alignment", {}).get("window")
    return scoring.model_copy(update={"position_window": window})


def exact_pairs(queries: int, bank_codes: int, cells: int, retrieve: int) -> int:
    """Query x bank-code pairs an exact search of one frame visits at one scale: with image retrieval (`retrieve`
    K > 0, a bank of whole images) only the K nearest images' `cells` codes each."""
    images = bank_codes // cells
    return queries * (min(retrieve, images) * cells if retrieve else bank_codes)


def _thinned(info: dict) -> bool:
    """Was the bank this manifest entry describes thinned to a coreset (so it holds no whole images)?"""
    return info.get("coreset_ratio", 1.0) < 1.0


def planned_kernels(bundle: ModelBundle, scoring: ScoringConfig | None = None) -> dict[str, str]:
    """The k-NN kernel each scale will use, from the manifest alone (no bank loaded, no index built): what
    preflight and the benchmarks report."""
    scoring = resolve_scoring(scoring or bundle.config.scoring, bundle)
    geometry = TwoScaleGeometry.from_config(bundle.config.geometry)
    out = {}
    for scale, grid in (("small", geometry.small), ("large", geometry.large)):
        info = bundle.manifest["banks"][scale]
        whole = not _thinned(info)
        pairs = exact_pairs(grid.count, info["count"], grid.count, bundle.config.bank.retrieve if whole else 0)
        out[scale] = choose_kernel(scoring, pairs)
    return out


class AnomalyScorer:
    """The exact reference scoring path; faster k-NN kernels plug in behind the same outputs."""

    def __init__(
        self,
        bundle: ModelBundle,
        backend: EncoderBackend | None,
        scoring: ScoringConfig | None = None,
        banks: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        level_norm: float | None = None,
    ) -> None:
        """`banks` overrides the bundle's (codes, positions) per scale, e.g. a coreset under study (its maps are
        not level-normalised: the levels belong to the bundle's bank); `level_norm` overrides the bundle's
        `bank.level_norm` (0: plain maps)."""
        self.bundle = bundle
        self.scoring = resolve_scoring(scoring or bundle.config.scoring, bundle)
        self.geometry = TwoScaleGeometry.from_config(bundle.config.geometry)
        self.embedder = FrameEmbedder(backend, self.geometry, bundle.config.bank.neighbourhood) if backend is not None else None
        self.mapping = FrameMapping.from_config(bundle.config.geometry)
        self.grids = {"small": self.geometry.small, "large": self.geometry.large}
        self._banks = banks
        self._knn: dict[str, PatchScorer] | None = None
        self._retrieval: ImageRetrieval | None = None
        self._retrieval_decided = False
        self.retrieve = bundle.config.bank.retrieve  # the bank's setting when this scorer was made
        self.level_norm = bundle.config.bank.level_norm if level_norm is None else level_norm
        self._levels: BankLevels | None = None
        self.positions = {scale: grid_positions(grid.shape) for scale, grid in self.grids.items()}
        self.top = top_pixels(self.scoring.image_score, self.geometry.small.patch)

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.mapping.input_hw

    def _bank_codes(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(codes, positions) per scale: the bundle's memory-mapped banks, or the ones this scorer was given."""
        return {scale: self._banks[scale] if self._banks else self.bundle.bank_data(scale)[:2] for scale in self.grids}

    def _decide_retrieval(self) -> None:
        """Set up image retrieval once, from the banks alone (no k-NN kernel is needed to decide it)."""
        if self._retrieval_decided:
            return
        self._retrieval_decided = True
        if not self.retrieve:
            return
        codes = {scale: bank[0] for scale, bank in self._bank_codes().items()}
        cells = {s: g.count for s, g in self.grids.items()}
        if not self._whole_images(codes):
            log.info("image retrieval off: this bank is a coreset, which holds no whole images")
            return
        retrieval = ImageRetrieval.from_banks(codes, cells, self.retrieve)
        self._retrieval = retrieval if retrieval.k < retrieval.images else None  # K >= bank: nothing to restrict
        self._levels = self._bank_levels(retrieval.images)

    def _bank_levels(self, images: int) -> BankLevels | None:
        """The bank's leave-one-out levels (core/levels.py) when frames are normalised by them: `bank.level_norm`
        above 0, retrieval restricting the search, the bundle's own bank, and levels measured on it."""
        if not self.level_norm or self._retrieval is None or self._banks is not None:
            return None
        entry = self.bundle.manifest.get("levels")
        if not entry:
            log.warning("bank.level_norm is %g but this bank has no measured levels: maps are not normalised "
                        "(rebuild the bank with `sclvi bank` to measure them)", self.level_norm)
            return None
        levels = BankLevels.from_manifest(entry)
        if levels.bank_images != images:
            log.warning("the bank's levels were measured on %d images, the bank holds %d: maps are not normalised "
                        "(rebuild the bank with `sclvi bank`)", levels.bank_images, images)
            return None
        return levels

    def bank_image_count(self) -> int | None:
        """Whole images in the bank (None for a coreset, which holds no whole images)."""
        codes = {scale: bank[0] for scale, bank in self._bank_codes().items()}
        return len(codes["small"]) // self.grids["small"].count if self._whole_images(codes) else None

    def _whole_images(self, codes: dict[str, np.ndarray]) -> bool:
        """Are the banks stored image by image? The bundle's own banks say so in their headers (a coreset can keep
        a multiple of a grid's codes by chance); banks given to this scorer are judged by their counts."""
        if self._banks is None and any(_thinned(self.bundle.manifest["banks"][s]) for s in self.grids):
            return False
        return whole_images(codes, {s: g.count for s, g in self.grids.items()})

    def bank_image_codes(self, image: int) -> tuple[np.ndarray, np.ndarray]:
        """(small, large) codes of one bank image, (cells, D) each: a bank image scored as a frame."""
        banks = self._bank_codes()
        return tuple(np.asarray(banks[s][0][image_rows(np.array([image]), g.count)], dtype=np.float32)
                     for s, g in self.grids.items())

    @property
    def knn(self) -> dict[str, PatchScorer]:
        """The k-NN kernels, built on first use: an embedding-only scorer never loads the banks."""
        if self._knn is None:
            self._decide_retrieval()
            k = 0 if self._retrieval is None else self._retrieval.k
            self._knn = {}
            for scale, (codes, positions) in self._bank_codes().items():
                grid = self.grids[scale]
                pairs = exact_pairs(grid.count, len(codes), grid.count, k)  # what auto weighs for this scale
                self._knn[scale] = make_patch_scorer(codes, positions, grid.shape, self.scoring, pairs)
        return self._knn

    @property
    def retrieved_images(self) -> int | None:
        """K when each frame is searched among its K nearest bank images only, None when the whole bank is
        (retrieval off, a coreset bank, or K not below the bank's image count). Builds no k-NN kernel."""
        self._decide_retrieval()
        return None if self._retrieval is None else self._retrieval.k

    def frame_images(self, small: np.ndarray, large: np.ndarray, exclude: int | None = None) -> np.ndarray | None:
        """The bank images one frame is searched among: its K nearest (bank.retrieve), or every image but
        `exclude`; None for the whole bank."""
        self._decide_retrieval()
        if self._retrieval is not None:
            return self._retrieval.nearest(small, large, exclude)
        if exclude is None:
            return None
        n = self.bank_image_count()
        if n is None:
            raise ValueError("a coreset bank holds no whole images: none can be left out")
        return np.delete(np.arange(n), exclude)

    def search_banks(self, images: np.ndarray | None = None) -> dict[str, PatchScorer]:
        """The k-NN kernels one frame is searched with: over the whole bank (`images` None), or over the memory
        items of bank `images` only (`frame_images`)."""
        knn = self.knn
        if images is None:
            return knn
        return {scale: kernel.restricted(image_rows(images, self.grids[scale].count)) for scale, kernel in knn.items()}

    def embed(self, frames: list[np.ndarray] | np.ndarray) -> FrameCodes:
        """Codes of all patches of (H, W, 3) uint8 model inputs (`mapping.to_input` of a camera frame)."""
        if self.embedder is None:
            raise ValueError("this scorer was built without an encoder backend: it can only score codes")
        batch = np.stack([self.bundle.normalise(check_frame(f, self.input_hw)) for f in frames])
        return self.embedder.embed(batch)

    def score_codes(self, small: np.ndarray, large: np.ndarray, timings: dict[str, float] | None = None,
                    exclude_image: int | None = None) -> FrameScore:
        """k-NN + affinity, pixel maps, fusion, level normalisation and image score for one frame's codes.

        `timings`, if given, receives the milliseconds spent in k-NN + affinity and in the map fusion.
        `exclude_image`: a bank image scored as if the bank did not hold it (its map is not level-normalised:
        core/levels.py measures the levels this way)."""
        t0 = time.perf_counter()
        images = self.frame_images(small, large, exclude_image)
        knn = self.search_banks(images)
        patch = {scale: knn[scale].score(c.reshape(-1, c.shape[-1]), self.positions[scale])
                 for scale, c in (("small", small), ("large", large))}
        t1 = time.perf_counter()
        maps = {scale: pixel_map(self.grids[scale], p.reshape(self.grids[scale].shape)) for scale, p in patch.items()}
        fused = smooth_map(fuse_maps(maps["small"], maps["large"], self.scoring.scale_fusion), self.scoring.map_sigma)
        if self._levels is not None and exclude_image is None:
            fused = fused / np.float32(self._levels.factor(images) ** self.level_norm)
        if timings is not None:
            timings["knn"] = 1000 * (t1 - t0)
            timings["fuse"] = 1000 * (time.perf_counter() - t1)
        return FrameScore(image_score(fused, self.top), fused, maps["small"], maps["large"])

    def score(self, frames: list[np.ndarray] | np.ndarray) -> list[FrameScore]:
        """Score (H, W, 3) uint8 model inputs (already cut and scaled: `mapping.to_input`)."""
        codes = self.embed(frames)
        return [self.score_codes(codes.small[i], codes.large[i]) for i in range(len(codes.small))]
