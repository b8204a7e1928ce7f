"""AUROC and PRO (MVTec AD protocol), the PRO checked against a brute-force threshold sweep."""

import numpy as np
import pytest
from scipy import ndimage

from sclvi.evaluate import pixel_auroc_vs_good
from sclvi.metrics import auroc, pro_auc


def _pro_brute_force(masks, maps, max_fpr=0.3):
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, lab == r) for r in range(1, n + 1)]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        xs.append((pred & normal).sum() / normal.sum())
        ys.append(np.mean([pred[i][r].mean() for i, r in regions]))
    xs, ys = np.array(xs), np.array(ys)
    grid = np.linspace(0, max_fpr, 20001)
    return np.trapezoid(np.interp(grid, xs, ys), grid) / max_fpr


def test_pro_matches_brute_force():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 20, 20), bool)
    masks[0, 2:6, 2:6] = True
    masks[0, 12:14, 10:19] = True  # two regions in one image, different sizes
    masks[2, 5:15, 5:7] = True
    maps = rng.random((3, 20, 20)).round(2) + masks * rng.random((3, 20, 20)) * 0.8  # with ties
    assert pro_auc(masks, maps) == pytest.approx(_pro_brute_force(masks, maps), abs=2e-4)


def test_pro_extremes():
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 4:8, 4:8] = True
    assert pro_auc(masks, masks.astype(float)) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    noise = rng.random((2, 16, 16))
    assert pro_auc(masks, noise) == pytest.approx(0.15, abs=0.05)  # random: area under the diagonal
    assert np.isnan(pro_auc(np.zeros((1, 4, 4), bool), noise[:1, :4, :4]))


def test_auroc():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert np.isnan(auroc([1, 1], [0.1, 0.2]))


def test_above_chance_is_a_one_sided_binomial_test():
    from sclvi.metrics import above_chance

    assert above_chance(0.10, 256, 1 / 12)[0] is False  # 26 of 256 against 21 expected: noise
    ok, p = above_chance(0.23, 256, 1 / 12)
    assert ok and p < 1e-9
    assert above_chance(0.02, 256, 1 / 12)[1] > 0.99  # below chance is not "above"


def test_pixel_auroc_vs_good_leaves_out_the_rest_of_defective_parts():
    """A map that lights up a whole defective part (defect 1.5, its unmarked pixels 2.0) and keeps every good
    part below 1: the plain pixel AUROC calls that near chance, against good parts it separates perfectly."""
    rng = np.random.default_rng(0)
    labels = np.array([False, False, True])
    masks = np.zeros((3, 8, 8), bool)
    masks[2, 2:4, 2:4] = True
    maps = rng.uniform(0, 1, (3, 8, 8))
    maps[2] = 2.0
    maps[2][masks[2]] = 1.5
    plain = auroc(masks, maps)
    assert plain == pytest.approx(128 / (128 + 60))  # 4 defect pixels beat the 128 good pixels, lose to the 60
    assert pixel_auroc_vs_good(labels, masks, maps) == pytest.approx(1.0)
    maps[2][~masks[2]] = 0.0  # the rest of the defective part now scores low: both agree again
    assert auroc(masks, maps) == pytest.approx(1.0)
    assert np.isnan(pixel_auroc_vs_good(np.ones(3, bool), masks, maps))  # no good part: nothing to compare with
