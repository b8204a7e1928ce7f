"""The affinity-augmented score (section 3.3) against hand-computed values, and the exact k-NN."""

import math

import numpy as np
import pytest

from sclvi.affinity import affinity_scores, affinity_weights, knn_exact, patch_scores


def test_hand_computed_two_neighbours():
    q = np.array([[0.0, 0.0]])
    bank = np.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    dist, idx = knn_exact(q, bank, 2)
    assert idx.tolist() == [[0, 1]] and dist.tolist() == [[1.0, 2.0]]
    # gamma = (3/1, 3/2) = (3, 1.5); beta = softmax -> e^1.5 / (e^1.5 + 1)
    b0 = math.exp(1.5) / (math.exp(1.5) + 1)
    assert affinity_weights(dist, 20.0)[0] == pytest.approx([b0, 1 - b0])
    fused = np.array([b0 * 1.0, (1 - b0) * 2.0])
    expected = math.hypot(*fused)  # about 0.8953
    assert affinity_scores(q, bank, dist, idx, 20.0, "paper")[0] == pytest.approx(expected)
    assert expected == pytest.approx(0.8953, abs=1e-4)
    # the authors' released code: sum_i beta_i d_i
    assert affinity_scores(q, bank, dist, idx, 20.0, "authors")[0] == pytest.approx(b0 * 1 + (1 - b0) * 2)


def test_lambda_clips_gamma():
    w = affinity_weights(np.array([[1.0, 100.0]]), 20.0)
    # gamma = (min(101, 20), min(1.01, 20)) = (20, 1.01)
    e = math.exp(20 - 1.01)
    assert w[0] == pytest.approx([e / (e + 1), 1 / (e + 1)])


def test_eta_1_is_plain_nearest_neighbour():
    rng = np.random.default_rng(0)
    q, bank = rng.normal(size=(50, 8)), rng.normal(size=(300, 8))
    nn_dist = np.linalg.norm(q[:, None] - bank[None], axis=2).min(axis=1)
    np.testing.assert_allclose(patch_scores(q, bank, 1, 20.0), nn_dist, rtol=1e-12)


def test_zero_distance_is_guarded():
    bank = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 0.0]])
    q = np.array([[1.0, 1.0]])
    dist, idx = knn_exact(q, bank, 3)
    assert dist[0, 0] == 0.0
    w = affinity_weights(dist, 20.0)
    assert np.isfinite(w).all() and w[0, 0] > 0.99
    score = affinity_scores(q, bank, dist, idx, 20.0)[0]
    assert np.isfinite(score) and score < 0.05
    # all distances zero: uniform weights, score exactly zero
    dup = np.array([[1.0, 1.0]] * 4)
    d, i = knn_exact(q, dup, 3)
    np.testing.assert_allclose(affinity_weights(d, 20.0), [[1 / 3] * 3])
    assert affinity_scores(q, dup, d, i, 20.0)[0] == 0.0


def test_knn_matches_brute_force_with_ties_and_small_banks():
    rng = np.random.default_rng(1)
    bank = rng.integers(-2, 3, size=(200, 4)).astype(np.float32)  # many exact ties and duplicates
    q = rng.integers(-2, 3, size=(64, 4)).astype(np.float32)
    dist, idx = knn_exact(q, bank, 10, block=7)
    full = np.linalg.norm(q[:, None].astype(np.float64) - bank[None], axis=2)
    for r in range(len(q)):
        order = np.lexsort((np.arange(len(bank)), full[r]))[:10]  # ties -> lower index first
        assert idx[r].tolist() == order.tolist()
        np.testing.assert_allclose(dist[r], full[r, order], atol=1e-12)
    d2, i2 = knn_exact(q, bank[:4], 10)  # eta larger than the bank: clipped
    assert d2.shape == (64, 4) and sorted(i2[0].tolist()) == [0, 1, 2, 3]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="empty"):
        knn_exact(np.zeros((1, 3)), np.zeros((0, 3)), 1)
    with pytest.raises(ValueError):
        knn_exact(np.zeros((1, 3)), np.zeros((5, 4)), 1)
    with pytest.raises(ValueError, match="formula"):
        patch_scores(np.zeros((1, 2)), np.ones((3, 2)), 2, 20.0, "median")
