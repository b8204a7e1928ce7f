"""Alignment measured on the bank decides whether scoring uses position windows."""

import numpy as np

from sclvi.alignment import measure_alignment
from sclvi.config import ScoringConfig
from sclvi.scorer import resolve_scoring


def _codes(aligned: bool, m=12, n=10, d=8, seed=0, cols=None):
    rng = np.random.default_rng(seed)
    cols = cols or n
    layout = rng.normal(size=(n, cols, d))  # what each place of the part looks like
    codes = np.empty((m, n, cols, d))
    for i in range(m):
        img = layout + 0.05 * rng.normal(size=layout.shape)
        if not aligned:  # the part sits anywhere: its patches appear at random places
            img = img.reshape(n * cols, d)[rng.permutation(n * cols)].reshape(n, cols, d)
        codes[i] = img
    return codes


def test_a_fixtured_part_is_aligned_and_a_moving_one_is_not():
    aligned = measure_alignment(_codes(True))
    moving = measure_alignment(_codes(False))
    assert aligned.ratio < 1.05 and aligned.window == 2 and aligned.images == 6
    assert moving.ratio > 1.5 and moving.window is None


def test_a_native_resolution_grid_is_sampled_not_compared_whole():
    # a 60x90 grid (a large roi): 400 sampled query cells per probe and a 20k-code bank, same verdicts
    aligned = measure_alignment(_codes(True, m=8, n=60, cols=90), max_cells=500, sample_cells=400, max_bank=20_000)
    moving = measure_alignment(_codes(False, m=8, n=60, cols=90), max_cells=500, sample_cells=400, max_bank=20_000)
    assert aligned.window == 2 and aligned.ratio < 1.05
    assert moving.window is None and moving.ratio > 1.5


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
