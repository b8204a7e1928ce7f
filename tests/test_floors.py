"""The no-learning floor: exact patch features, and it finds what a plain pixel difference can find."""

import numpy as np

from sclvi.benchmarks.floors import CELL, raw_pixel_codes, raw_pixel_floor
from sclvi.config import build_config
from sclvi.dataset import read_dataset
from sclvi.synthetic import write_synthetic


def test_raw_pixel_codes_are_each_patch_block_averaged_to_8x8():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, (96, 96, 3)).astype(np.float32)
    codes = raw_pixel_codes(frame, mean, patch=32, stride=8)
    assert codes.shape == (9, 9, 3 * CELL * CELL)
    f = (frame.astype(np.float32) - mean) / 255.0
    for i, j in ((0, 0), (3, 5), (8, 8)):
        p = f[8 * i : 8 * i + 32, 8 * j : 8 * j + 32]
        expected = p.reshape(CELL, 4, CELL, 4, 3).mean(axis=(1, 3)).transpose(2, 0, 1).ravel()
        np.testing.assert_allclose(codes[i, j], expected, rtol=1e-5, atol=1e-6)


def test_raw_pixel_floor_scores_defects_above_good_parts(tmp_path):
    root = write_synthetic(tmp_path, "object", size=128, n_train=6, n_test_good=4, n_test_defect=2, seed=0)
    ds = read_dataset(root)
    cfg = build_config("lite", {"geometry": {"image_size": 128, "small_stride": 8, "large_stride": 16}})
    scores, maps, _ = raw_pixel_floor(cfg, ds, ds.train)
    labels = np.array([t.is_anomalous for t in ds.test])
    assert maps.shape == (len(ds.test), 128, 128) and np.isfinite(maps).all()
    assert scores[labels].mean() > 2 * scores[~labels].mean()
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(axis=1))
