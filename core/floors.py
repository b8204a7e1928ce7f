"""The floors every quality claim stands next to: what the product's geometry and scoring get with no
learning at all.

- raw-pixel: each 32-px patch (stride `geometry.small_stride`) averaged down to 8x8 pixels minus the
  training mean image (after the config's photometric step, as the product does), plain nearest-neighbour distance to the training patches, map = mean over the
  covering patches (smoothed as `scoring.map_sigma` says, like the product's map), image score = max, or the mean of the top patch's worth of pixels as `scoring.image_score` says.
  No network, no training.
- untrained: the preset's encoder at its random initialisation, with the same bank and scoring as the
  trained model (benchmarks only: `sclvi.benchmarks.common.untrained_bundle`).

A trained encoder that does not beat both has learned nothing the line needs. The raw-pixel floor lives here,
not in benchmarks/, because `sclvi eval --floor` shows it beside a user's own model on their own parts.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from sclvi.config import Config, ScoringConfig
from sclvi.dataset import MVTecDataset
from sclvi.geometry import PatchGrid
from sclvi.images import mean_image, photometric
from sclvi.roi import read_input
from sclvi.knn import make_patch_scorer
from sclvi.knn.buckets import grid_positions
from sclvi.maps import image_score, pixel_map, smooth_map, top_pixels

#: Side of the downsampled patch (a 32-px patch becomes 8x8 pixels).
CELL = 8


def misfit(patch: int, stride: int, h: int, w: int) -> str | None:
    """Why the floor's patch/CELL-px blocks do not tile this geometry, or None where they do."""
    block = patch // CELL
    if patch % CELL or stride % block or h % block or w % block:
        return f"patch {patch} / stride {stride} / size {w}x{h} do not fall on {block}-px blocks"
    return None


def raw_pixel_codes(frame: np.ndarray, mean: np.ndarray, patch: int, stride: int, mode: str = "none") -> np.ndarray:
    """(H, W, 3) uint8 -> (rows, cols, 3 * CELL * CELL): every strided patch, block-averaged to CELL x CELL, after
    the same photometric step (`preprocess.photometric`) as the product, so the floor differs only in learning."""
    f = (photometric(frame, mode) - mean) / 255.0
    h, w = f.shape[:2]
    why = misfit(patch, stride, h, w)
    if why:
        raise ValueError(why)
    block = patch // CELL
    small = f.reshape(h // block, block, w // block, block, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
    views = PatchGrid(h // block, w // block, CELL, stride // block).patches(np.ascontiguousarray(small))
    return np.ascontiguousarray(views.reshape(*views.shape[:2], -1))


def raw_pixel_floor(cfg: Config, dataset: MVTecDataset, bank_images: list) -> tuple[np.ndarray, np.ndarray, float]:
    """(image scores, maps, seconds per test image) of the raw-pixel floor at the config's geometry."""
    g = cfg.geometry
    patch, stride = g.small_patch, g.small_stride
    mode = cfg.preprocess.photometric
    frames = np.stack([read_input(p, g) for p in bank_images])
    mean = mean_image(frames, mode)
    bank = np.concatenate([raw_pixel_codes(f, mean, patch, stride, mode).reshape(-1, 3 * CELL * CELL)
                           for f in tqdm(frames, desc="raw-pixel bank", unit="img")])
    grid = PatchGrid(*g.input_hw, patch, stride)
    positions = grid_positions(grid.shape)
    scorer = make_patch_scorer(bank, np.tile(positions, (len(frames), 1)), grid.shape,
                               ScoringConfig(eta=1, formula="authors", knn="numba"))  # eta 1: plain 1-NN distance
    scores = np.empty(len(dataset.test))
    maps = np.empty((len(dataset.test), *g.input_hw), dtype=np.float32)
    top = top_pixels(cfg.scoring.image_score, patch)
    t0 = time.perf_counter()
    for i, item in enumerate(tqdm(dataset.test, desc="raw-pixel floor", unit="img")):
        q = raw_pixel_codes(read_input(item.path, g), mean, patch, stride, mode).reshape(-1, 3 * CELL * CELL)
        maps[i] = smooth_map(pixel_map(grid, scorer.score(q, positions).reshape(grid.shape)), cfg.scoring.map_sigma)
        scores[i] = image_score(maps[i], top)  # the product's image score (scoring.image_score), as for the encoder
    return scores, maps, (time.perf_counter() - t0) / max(1, len(dataset.test))
