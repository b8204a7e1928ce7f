"""Alignment measured on the bank decides whether scoring uses position windows."""

import numpy as np

from sclvi.alignment import measure_alignment
from sclvi.config import ScoringConfig
from sclvi.scorer import resolve_scoring


def _codes(aligned: bool, m=12, n=10, d=8, seed=0):
    rng = np.random.default_rng(seed)
    layout = rng.normal(size=(n, n, d))  # what each place of the part looks like
    codes = np.empty((m, n, n, d))
    for i in range(m):
        img = layout + 0.05 * rng.normal(size=layout.shape)
        if not aligned:  # the part sits anywhere: its patches appear at random places
            img = img.reshape(n * n, d)[rng.permutation(n * n)].reshape(n, n, d)
        codes[i] = img
    return codes


def test_a_fixtured_part_is_aligned_and_a_moving_one_is_not():
    aligned = measure_alignment(_codes(True))
    moving = measure_alignment(_codes(False))
    assert aligned.ratio < 1.05 and aligned.window == 2 and aligned.images == 6
    assert moving.ratio > 1.5 and moving.window is None


def test_auto_window_follows_the_bundles_measurement():
    class FakeBundle:
        def __init__(self, manifest):
            self.manifest = manifest

    auto = ScoringConfig()
    assert auto.position_window == "auto" and auto.window is None  # unresolved: whole bank
    assert resolve_scoring(auto, FakeBundle({"alignment": {"window": 2}})).window == 2
    assert resolve_scoring(auto, FakeBundle({"alignment": {"window": None}})).window is None
    assert resolve_scoring(auto, FakeBundle({})).window is None  # bundles from before the measurement
    assert resolve_scoring(ScoringConfig(position_window=4), FakeBundle({"alignment": {"window": 2}})).window == 4
    assert resolve_scoring(ScoringConfig(position_window=None), FakeBundle({"alignment": {"window": 2}})).window is None
