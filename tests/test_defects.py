"""Synthetic defects (train/defects.py) and the synthetic-defect training term."""

import numpy as np
import torch

from conftest import tiny_config
from sclvi.synthetic import write_synthetic
import pytest

from sclvi.train.defects import DEFAULT_KINDS, KINDS, blob_mask, finish_mask, make_defects, paste_mask, refinish, scar_mask
from sclvi.train.trainer import train


def test_masks_lie_inside_the_patch_and_are_neither_empty_nor_whole():
    rng = np.random.default_rng(0)
    for make in (paste_mask, scar_mask, blob_mask):
        m = make(rng, 64, 32)
        assert m.shape == (64, 1, 32, 32)
        assert float(m.min()) >= 0 and float(m.max()) <= 1
        covered = (m > 0.5).float().mean(dim=(1, 2, 3))
        assert (covered > 0).all(), make.__name__  # every sample gets a visible defect
        assert (covered < 0.5).all(), make.__name__  # and it is a defect, not a new patch
        # centred in the patch (the defect belongs to this patch's code, not its neighbour's)
        ax = torch.arange(32.0)
        w = m[:, 0].sum(dim=(1, 2))
        cy = (m[:, 0].sum(dim=2) * ax).sum(dim=1) / w
        cx = (m[:, 0].sum(dim=1) * ax).sum(dim=1) / w
        edge = 0 if make is paste_mask else 4  # rectangles may sit in a corner; scars and blobs are centred
        assert float(torch.minimum(cy, cx).min()) >= edge and float(torch.maximum(cy, cx).max()) <= 31 - edge, make.__name__


def test_make_defects_changes_only_the_damaged_area_and_labels_each_kind():
    rng = np.random.default_rng(1)
    clean = torch.zeros(300, 3, 32, 32)
    donors = torch.full((300, 3, 32, 32), 0.5)
    damaged, kind = make_defects(clean, donors, rng)
    assert set(kind.tolist()) == {1, 2, 3} and DEFAULT_KINDS == ("paste", "scar", "blob")
    changed = (damaged != clean).flatten(1).any(dim=1)
    assert changed.all()  # every sample carries its defect
    frac = (damaged - clean).abs().gt(0).float().mean(dim=(1, 2, 3))
    assert float(frac.max()) < 0.75  # the largest stains touch much of the patch, never all of it
    assert torch.equal(clean, torch.zeros_like(clean))  # the input is not modified in place
    again, kind2 = make_defects(clean, donors, np.random.default_rng(1))
    assert torch.equal(again, damaged) and torch.equal(kind2, kind)  # seeded: training stays reproducible


def test_a_finish_defect_changes_the_grain_of_a_region_not_its_gray_level():
    """The `finish` kind: one side of a line (or, a quarter of the time, the whole patch) keeps its mean gray level
    but loses or gains its fine grain: what a band of another grind or coating looks like."""
    rng = np.random.default_rng(0)
    m = finish_mask(rng, 400, 32)
    covered = (m > 0.5).float().mean(dim=(1, 2, 3))
    assert float(covered.min()) > 0.1  # never a sliver
    whole = covered == 1.0
    assert 0.15 < float(whole.float().mean()) < 0.35  # some seen from inside, no boundary in view
    assert float(covered[~whole].max()) < 0.9  # the others show both finishes and the boundary between them
    grain = torch.randn(200, 3, 32, 32) * 0.1 + 0.3  # a fine texture around a gray level
    out = refinish(grain, np.random.default_rng(1))
    assert float((out.mean(dim=(1, 2, 3)) - grain.mean(dim=(1, 2, 3))).abs().max()) < 0.01  # gray level kept
    ratio = (out - out.mean(dim=(1, 2, 3), keepdim=True)).std(dim=(1, 2, 3)) / grain.std(dim=(1, 2, 3))
    assert (ratio < 0.7).any() and (ratio > 1.5).any() and not ((ratio > 0.9) & (ratio < 1.1)).any()  # grain smoothed or strengthened
    flat = torch.full((8, 3, 32, 32), 0.3)
    assert torch.allclose(refinish(flat, rng), flat, atol=1e-6)  # a grainless patch has no finish to change


def test_make_defects_trains_on_the_kinds_asked_for_and_labels_them_in_that_order():
    clean, donors = torch.randn(400, 3, 32, 32) * 0.1, torch.zeros(400, 3, 32, 32)
    damaged, label = make_defects(clean, donors, np.random.default_rng(0), ("finish", "scar"))
    assert set(label.tolist()) == {1, 2}
    finish = damaged[label == 1]  # grain changed, gray level kept, no donor pixels pasted in
    assert float((finish.mean(dim=(1, 2, 3)) - clean[label == 1].mean(dim=(1, 2, 3))).abs().max()) < 0.02
    assert set(KINDS) == {"paste", "scar", "blob", "finish"}
    with pytest.raises(ValueError, match="defect kinds"):
        make_defects(clean, donors, np.random.default_rng(0), ("dent",))


def test_training_with_the_defect_term_logs_its_accuracy_and_keeps_the_paper_loss_without_it(tmp_path):
    data = write_synthetic(tmp_path / "d", "texture", size=176, n_train=4, n_test_good=1, n_test_defect=1)
    base = {"steps": 2, "batch_size": 8, "eval_every": 1, "threads": 1, "schedule": "constant"}
    with_term = train(tiny_config(176, train={**base, "defect_weight": 1.0}), data, tmp_path / "with")
    evals = with_term.manifest["training"]["evals"]
    assert all(0.0 <= e["defect_acc32"] <= 1.0 and 0.0 <= e["defect_acc64"] <= 1.0 for e in evals)
    without = train(tiny_config(176, train={**base, "defect_weight": 0.0}), data, tmp_path / "without")
    assert all("defect_acc32" not in e for e in without.manifest["training"]["evals"])
    # the term changes what the encoder learns
    assert any(not np.array_equal(with_term.weights[k], without.weights[k]) for k in with_term.weights)
    # and so do the kinds it trains on (a head of 1 + 1 classes here)
    finish = train(tiny_config(176, train={**base, "defect_weight": 1.0, "defect_kinds": ["finish"]}), data, tmp_path / "finish")
    assert finish.config.train.defect_kinds == ("finish",)
    assert any(not np.array_equal(with_term.weights[k], finish.weights[k]) for k in with_term.weights)
