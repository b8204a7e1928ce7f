"""Patch grids, the quarter gather between scales, pixel-score distribution (eq. 7) and fusion."""

import numpy as np
import pytest

from sclvi.config import build_config
from sclvi.geometry import PatchGrid, TwoScaleGeometry
from sclvi.maps import fuse_maps, image_score, pixel_map


def test_paper_geometry_counts():
    g = TwoScaleGeometry.from_config(build_config("paper").geometry)
    assert (g.small.shape, g.small.count) == ((57, 57), 3249)
    assert (g.large.shape, g.large.count) == ((13, 13), 169)


def test_strided_views_equal_naive_crops_without_copying():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(3, 96, 96)).astype(np.float32)
    grid = PatchGrid(96, 96, 32, 4)
    view = grid.patches(img)
    assert view.shape == (17, 17, 3, 32, 32)
    assert np.shares_memory(view, img)
    for i, j in [(0, 0), (3, 11), (16, 16)]:
        np.testing.assert_array_equal(view[i, j], img[:, 4 * i : 4 * i + 32, 4 * j : 4 * j + 32])
    with pytest.raises(ValueError, match="96"):
        grid.patches(img[:, :90])


def test_quarter_index_points_at_the_quarters_of_each_large_patch():
    g = TwoScaleGeometry.from_config(build_config("paper").geometry)
    q = g.quarter_index()
    assert q.shape == (169, 2, 2)
    for k in [0, 5, 168]:
        top, left = divmod(k, 13)
        y, x = 16 * top, 16 * left
        for a in range(2):
            for b in range(2):
                r, c = divmod(int(q[k, a, b]), 57)
                assert (4 * r, 4 * c) == (y + 32 * a, x + 32 * b)


def test_pixel_score_is_the_mean_of_covering_patches():
    grid = PatchGrid(8, 8, 4, 2)
    scores = np.arange(9, dtype=float).reshape(3, 3)
    naive_sum, naive_cnt = np.zeros((8, 8)), np.zeros((8, 8))
    for i in range(3):
        for j in range(3):
            naive_sum[2 * i : 2 * i + 4, 2 * j : 2 * j + 4] += scores[i, j]
            naive_cnt[2 * i : 2 * i + 4, 2 * j : 2 * j + 4] += 1
    np.testing.assert_allclose(pixel_map(grid, scores), naive_sum / naive_cnt, rtol=1e-6)
    assert pixel_map(grid, scores)[0, 0] == 0.0  # only patch (0,0) covers the corner
    assert pixel_map(grid, scores)[3, 3] == pytest.approx((0 + 1 + 3 + 4) / 4)


def test_coverage_on_the_paper_grid():
    cover = PatchGrid(256, 256, 32, 4).coverage
    assert cover[0, 0] == 1 and cover[128, 128] == 64 and cover.min() >= 1


def test_fusion_and_image_score():
    a, b = np.full((4, 4), 2.0), np.full((4, 4), 3.0)
    b[1, 2] = 10.0
    assert fuse_maps(a, b)[1, 2] == 20.0 and fuse_maps(a, b)[0, 0] == 6.0
    assert fuse_maps(a, b, "sum")[1, 2] == 12.0
    assert image_score(fuse_maps(a, b)) == 20.0
    with pytest.raises(ValueError):
        fuse_maps(a, b[:2])
    with pytest.raises(ValueError, match="fusion"):
        fuse_maps(a, b, "max")


def test_map_smoothing_keeps_a_defect_and_damps_a_single_noisy_pixel():
    from sclvi.maps import smooth_map

    m = np.zeros((64, 64), np.float32)
    m[10, 10] = 1.0  # one noisy pixel
    m[40:52, 40:52] = 0.5  # a defect spanning several patches
    s = smooth_map(m, 4.0)
    assert s.dtype == np.float32 and s.shape == m.shape
    assert s[46, 46] > s[10, 10]  # the defect now sets the image score, not the speck
    assert smooth_map(m, 0.0) is m
