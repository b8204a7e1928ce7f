"""Shared fixtures: small configs, synthetic data sets and untrained bundles, all generated here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sclvi.config import Config, build_config

# Tiny widths keep unit tests fast; the architecture (layer kinds and spatial sizes) is unchanged.
TINY_ENCODER = {"conv_widths": (8, 16, 16, 16, 16, 16), "secondary_width": 16, "embed_dim": 16, "groups": 4}


def tiny_config(image_size: int = 96, **sections: dict) -> Config:
    overrides = {"encoder": TINY_ENCODER, "geometry": {"image_size": image_size}}
    for key, value in sections.items():
        overrides[key] = {**overrides.get(key, {}), **value}
    return build_config("lite", overrides)


@pytest.fixture(scope="session")
def synthetic_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sclvi.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    return write_synthetic(root, "object", size=96, n_train=6, n_test_good=3, n_test_defect=2, seed=1)


def make_bundle(path: Path, cfg: Config, train_images: list[Path] | None = None, seed: int = 0):
    """An untrained (random-weight) bundle, with a memory bank when images are given."""
    from sclvi.benchmarks.common import untrained_bundle

    return untrained_bundle(path, cfg, train_images, seed)


@pytest.fixture()
def random_bundle(tmp_path: Path, synthetic_object: Path):
    from sclvi.dataset import read_dataset

    return make_bundle(tmp_path / "bundle", tiny_config(), read_dataset(synthetic_object).train)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
