"""Frame embedding reuses 32-px codes for the 64-px scale exactly; the scorer finds planted defects."""

import numpy as np
import pytest
import torch

from sclvi.config import build_config
from sclvi.embedding import FrameEmbedder
from sclvi.errors import ConfigError
from sclvi.engines.torch_backend import TorchBackend
from sclvi.geometry import TwoScaleGeometry
from sclvi.images import read_rgb
from sclvi.model import build_model, load_numpy_state
from sclvi.scorer import AnomalyScorer


class CountingBackend:
    """Wraps a backend and counts engine calls (the per-frame path must make exactly two)."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, "counting", []

    def encode_small(self, x):
        self.calls.append(("small", len(x)))
        return self.inner.encode_small(x)

    def encode_grid(self, x):
        self.calls.append(("grid", len(x)))
        return self.inner.encode_grid(x)


def test_gathered_large_codes_equal_direct_64px_embedding(random_bundle, synthetic_object):
    cfg = random_bundle.config
    geometry = TwoScaleGeometry.from_config(cfg.geometry)
    backend = CountingBackend(TorchBackend(random_bundle))
    frame = random_bundle.normalise(read_rgb(next((synthetic_object / "test" / "hole").iterdir()), 96))
    codes = FrameEmbedder(backend, geometry).embed(frame)
    assert backend.calls == [("small", 17 * 17), ("grid", 3 * 3)]  # one call per encoder per frame

    model = build_model(cfg.encoder)
    load_numpy_state(model, random_bundle.weights)
    model.eval()
    x = torch.from_numpy(frame)
    with torch.no_grad():
        for (i, j) in [(0, 0), (1, 2), (2, 2)]:
            direct = model.embed_large(x[None, :, 16 * i : 16 * i + 64, 16 * j : 16 * j + 64])[0].numpy()
            np.testing.assert_allclose(codes.large[0, i, j], direct, atol=1e-5)
        for (i, j) in [(0, 0), (5, 9), (16, 16)]:
            direct = model.embed_small(x[None, :, 4 * i : 4 * i + 32, 4 * j : 4 * j + 32])[0].numpy()
            np.testing.assert_allclose(codes.small[0, i, j], direct, atol=1e-5)


def test_scorer_maps_are_consistent_and_training_images_score_low(random_bundle, synthetic_object):
    scorer = AnomalyScorer(random_bundle, TorchBackend(random_bundle))
    train_img = read_rgb(sorted((synthetic_object / "train" / "good").iterdir())[0], 96)
    hole_img = read_rgb(sorted((synthetic_object / "test" / "hole").iterdir())[0], 96)
    own, hole = scorer.score([train_img, hole_img])
    assert own.anomaly_map.shape == (96, 96)
    np.testing.assert_allclose(own.anomaly_map, own.small_map * own.large_map, rtol=1e-6)
    assert own.score == own.anomaly_map.max()
    # even an untrained encoder separates a planted hole from an image of the bank
    assert hole.score > 3 * own.score
    # with eta = 1 (plain nearest neighbour) a training image's patches all have distance 0
    nn_scorer = AnomalyScorer(random_bundle, TorchBackend(random_bundle), random_bundle.config.scoring.model_copy(update={"eta": 1}))
    assert nn_scorer.score([train_img])[0].score == 0.0


def test_frame_photometric_mode_makes_the_encoder_input_blind_to_exposure():
    """A part photographed darker (exposure, lamp ageing) must reach the encoder unchanged under
    preprocess.photometric: frame, and must not under the paper's mean-image subtraction alone."""
    from sclvi.images import FRAME_MEAN, FRAME_STD, normalise, photometric

    rng = np.random.default_rng(0)
    frame = rng.integers(60, 200, (64, 64, 3)).astype(np.uint8)
    darker = (frame.astype(np.float32) * 0.6 + 10).round().astype(np.uint8)
    mean = np.full((64, 64, 3), 100, np.float32)
    a, b = normalise(frame, mean, "frame"), normalise(darker, mean, "frame")
    assert np.abs(a - b).max() < 0.02  # rounding to uint8 only
    assert np.abs(normalise(frame, mean) - normalise(darker, mean)).max() > 0.1
    f = photometric(frame, "frame")
    assert abs(f.mean() - FRAME_MEAN) < 1e-3 and abs(f.std() - FRAME_STD) < 1e-2
    flat = np.full((8, 8, 3), 30, np.uint8)
    np.testing.assert_allclose(photometric(flat, "frame"), FRAME_MEAN)  # shifted, not blown up


def test_bundle_normalises_with_its_own_photometric_mode(tmp_path, random_bundle):
    from sclvi.bundle import load_bundle, save_bundle
    from sclvi.images import normalise

    frame = np.random.default_rng(1).integers(0, 255, random_bundle.mean.shape).astype(np.uint8)
    for mode in ("frame", "none"):
        cfg = random_bundle.config.model_copy(update={"preprocess": random_bundle.config.preprocess.model_copy(update={"photometric": mode})})
        save_bundle(tmp_path / mode, cfg, random_bundle.weights, random_bundle.mean, {})
        b = load_bundle(tmp_path / mode)
        np.testing.assert_array_equal(b.normalise(frame), normalise(frame, b.mean, mode))
    assert not np.array_equal(load_bundle(tmp_path / "frame").normalise(frame), load_bundle(tmp_path / "none").normalise(frame))


def test_neighbourhood_aggregation_averages_each_code_with_its_grid_neighbours():
    from sclvi.embedding import aggregate

    grid = np.zeros((1, 5, 6, 2), np.float32)
    grid[0, 2, 3] = [9.0, -9.0]  # one distinct patch
    out = aggregate(grid, 3)
    assert out.shape == grid.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 1:4, 2:5], np.full((3, 3, 2), [1.0, -1.0]))  # spread over its 3x3 with weight 1/9
    assert not out[0, 0].any() and not out[0, :, :2].any()  # nothing beyond
    edge = np.zeros((1, 4, 4, 1), np.float32)
    edge[0, 0, 0] = 9.0  # at a corner the edge is repeated, not zero-padded: the corner keeps 4/9
    assert aggregate(edge, 3)[0, 0, 0, 0] == pytest.approx(4.0)
    np.testing.assert_array_equal(aggregate(grid, 1), grid)


def test_bank_and_queries_are_aggregated_alike(random_bundle, synthetic_object):
    """Product presets aggregate 3x3 (the paper preset does not); the bank and the queries must get the same
    codes, or a training image would no longer match itself."""
    assert random_bundle.config.bank.neighbourhood == 3 and build_config("paper").bank.neighbourhood == 1
    backend = TorchBackend(random_bundle)
    geometry = TwoScaleGeometry.from_config(random_bundle.config.geometry)
    train_img = read_rgb(sorted((synthetic_object / "train" / "good").iterdir())[0], 96)
    frame = random_bundle.normalise(train_img)
    plain, mixed = FrameEmbedder(backend, geometry).embed(frame), FrameEmbedder(backend, geometry, 3).embed(frame)
    assert not np.allclose(plain.large, mixed.large)
    scorer = AnomalyScorer(random_bundle, backend, random_bundle.config.scoring.model_copy(update={"eta": 1}))
    np.testing.assert_allclose(scorer.embed([train_img]).small[0], mixed.small[0], atol=1e-5)
    assert scorer.score([train_img])[0].score == 0.0  # the bank holds exactly these aggregated codes
    with pytest.raises(ConfigError, match="odd"):
        build_config("lite", {"bank": {"neighbourhood": 2}}).bank
