"""Memory bank: the codes of every strided patch of every training image, per scale."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sclvi.bundle import ModelBundle, add_bank
from sclvi.embedding import EncoderBackend, FrameEmbedder
from sclvi.geometry import TwoScaleGeometry
from sclvi.images import normalise, read_rgb

log = logging.getLogger(__name__)


def build_memory_bank(
    bundle: ModelBundle, backend: EncoderBackend, images: Sequence[Path], batch: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Embed all training images and store both banks in the bundle; returns (small, large)."""
    cfg = bundle.config
    geometry = TwoScaleGeometry.from_config(cfg.geometry)
    embedder = FrameEmbedder(backend, geometry)
    dim = cfg.encoder.embed_dim
    small = np.empty((len(images) * geometry.small.count, dim), dtype=np.float32)
    large = np.empty((len(images) * geometry.large.count, dim), dtype=np.float32)
    size = cfg.geometry.image_size
    with tqdm(total=len(images), desc="memory bank", unit="img") as bar:
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            frames = np.stack([normalise(read_rgb(p, size), bundle.mean) for p in chunk])
            codes = embedder.embed(frames)
            n = len(chunk)
            small[start * geometry.small.count : (start + n) * geometry.small.count] = codes.small.reshape(-1, dim)
            large[start * geometry.large.count : (start + n) * geometry.large.count] = codes.large.reshape(-1, dim)
            bar.update(n)
    add_bank(bundle, "small", small, geometry.small.patch, geometry.small.stride)
    add_bank(bundle, "large", large, geometry.large.patch, geometry.large.stride)
    log.info("memory bank: %d small and %d large codes of dim %d", len(small), len(large), dim)
    return small, large

