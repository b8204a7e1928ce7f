"""Frame embedding reuses 32-px codes for the 64-px scale exactly; the scorer finds planted defects."""

import numpy as np
import torch

from sclvi.embedding import FrameEmbedder
from sclvi.engines.torch_backend import TorchBackend
from sclvi.geometry import TwoScaleGeometry
from sclvi.images import normalise, read_rgb
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
    frame = normalise(read_rgb(next((synthetic_object / "test" / "hole").iterdir()), 96), random_bundle.mean)
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
