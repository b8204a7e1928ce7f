"""Memory bank: the codes of every strided patch of every training image, per scale."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sclvi.bank_file import BankHeader
from sclvi.alignment import measure_alignment
from sclvi.bundle import ModelBundle, add_bank, record, set_bank_config
from sclvi.config import BankConfig, Config
from sclvi.embedding import EncoderBackend, FrameEmbedder
from sclvi.geometry import TwoScaleGeometry
from sclvi.roi import read_input
from sclvi.scorer import AnomalyScorer
from sclvi.knn.buckets import grid_positions
from sclvi.knn.coreset import cell_coreset, greedy_coreset
from sclvi.levels import measure_levels

log = logging.getLogger(__name__)


def bank_images(images: Sequence[Path], max_images: int | None, seed: int) -> list[Path]:
    """The images a bank is built from: all, or a seeded subset of `max_images` (order kept)."""
    if max_images is None or len(images) <= max_images:
        return list(images)
    pick = np.sort(np.random.default_rng(seed).choice(len(images), max_images, replace=False))
    return [images[i] for i in pick]


def coreset_keep(codes: np.ndarray, positions: np.ndarray, grid: tuple[int, int], window: int | None, ratio: float,
                 cfg: Config) -> np.ndarray:
    """Indices of a bank's coreset: per grid cell when the bank is searched in position windows (every
    window keeps its share, at least eta codes per cell), greedy k-center over the whole bank otherwise."""
    bc = cfg.bank
    if window is not None:
        return cell_coreset(codes, positions, grid, ratio, cfg.scoring.eta, bc.projection_dim, bc.seed)
    return greedy_coreset(codes, ratio, bc.projection_dim, bc.seed)


def build_memory_bank(
    bundle: ModelBundle, backend: EncoderBackend, images: Sequence[Path], batch: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Embed the training images and store both banks in the bundle; returns (small, large)."""
    cfg = bundle.config
    bc = cfg.bank
    chosen = bank_images(images, bc.max_images, bc.seed)
    if len(chosen) < len(images):
        log.info("memory bank from a seeded subset of %d images", len(chosen))
    images = chosen
    geometry = TwoScaleGeometry.from_config(cfg.geometry)
    embedder = FrameEmbedder(backend, geometry, bc.neighbourhood)
    dim = cfg.encoder.embed_dim
    small = np.empty((len(images) * geometry.small.count, dim), dtype=np.float32)
    large = np.empty((len(images) * geometry.large.count, dim), dtype=np.float32)
    with tqdm(total=len(images), desc="memory bank", unit="img") as bar:
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            frames = np.stack([bundle.normalise(read_input(p, cfg.geometry)) for p in chunk])
            codes = embedder.embed(frames)
            n = len(chunk)
            small[start * geometry.small.count : (start + n) * geometry.small.count] = codes.small.reshape(-1, dim)
            large[start * geometry.large.count : (start + n) * geometry.large.count] = codes.large.reshape(-1, dim)
            bar.update(n)
    scales = (("small", geometry.small, small), ("large", geometry.large, large))
    measured = {scale: measure_alignment(codes.reshape(len(images), *grid.shape, dim), seed=bc.seed)
                for scale, grid, codes in scales}
    aligned = all(a.window is not None for a in measured.values())
    window = measured["small"].window if aligned else None
    record(bundle, "alignment", {"window": window, **{s: a.as_dict() for s, a in measured.items()}})
    log.info("alignment: windowed / global nearest-neighbour distance %.3f (32 px), %.3f (64 px) -> %s",
             measured["small"].ratio, measured["large"].ratio,
             f"aligned part, position window +-{window} cells" if aligned else "not aligned, whole-bank search")
    for scale, grid, codes in scales:
        positions = np.tile(grid_positions(grid.shape), (len(images), 1))
        if bc.coreset_ratio < 1:
            keep = coreset_keep(codes, positions, grid.shape, window, bc.coreset_ratio, cfg)
            codes, positions = codes[keep], positions[keep]
        header = BankHeader(scale, grid.patch, grid.stride, list(grid.shape), dim, len(codes), "float32", bc.coreset_ratio)
        add_bank(bundle, codes, positions, header)
        log.info("memory bank %s: %d codes of dim %d (coreset ratio %g)", scale, len(codes), dim, bc.coreset_ratio)
    record(bundle, "levels", bank_levels(bundle))
    return bundle.bank("small"), bundle.bank("large")


def bank_levels(bundle: ModelBundle) -> dict | None:
    """The bank's leave-one-out levels for `bank.level_norm` (core/levels.py), measured on the bank just written;
    None (logged) when the setting is off or the bank cannot give them (a coreset, or retrieval not restricting)."""
    bc = bundle.config.bank
    if not bc.level_norm:
        return None
    record(bundle, "levels", None)  # the old bank's levels say nothing about this one, even if measuring fails
    scorer = AnomalyScorer(bundle, None, level_norm=0.0)  # measuring: scored as plain maps
    if scorer.retrieved_images is None:
        log.info("bank.level_norm is set but each frame searches the whole bank (a coreset, bank.retrieve 0, or "
                 "no more images than bank.retrieve): no levels measured, maps not normalised")
        return None
    return measure_levels(scorer, bc.seed).as_dict()


def rebuild_memory_bank(bundle: ModelBundle, backend: EncoderBackend, images: Sequence[Path],
                        bank: BankConfig) -> tuple[np.ndarray, np.ndarray]:
    """A new bank for a trained bundle, with other bank settings or more good images, without retraining
    (the encoder does not depend on the bank). Returns (small, large) like build_memory_bank.
    The new settings reach the manifest (and the calibration is dropped) only once the bank is written: a
    failure while embedding (an unreadable image, Ctrl-C) leaves the bundle as it was."""
    old = bundle.config
    bundle.config = old.model_copy(update={"bank": bank})  # what build_memory_bank follows
    try:
        banks = build_memory_bank(bundle, backend, images)
    except BaseException:
        bundle.config = old
        raise
    if set_bank_config(bundle, bank):
        log.warning("the bundle's calibrated thresholds were dropped (set on the old bank's scores): run "
                    "`sclvi calibrate` again before the line uses it")
    return banks
