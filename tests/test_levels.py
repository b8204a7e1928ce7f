"""Frame-level normalisation (bank.level_norm, core/levels.py): levels measured leave-one-out exactly, maps divided
by the retrieved images' level, and the case it is for — a rare variant of good part that scored high all over
outranked a defect on a common one."""

import numpy as np
import pytest

from conftest import make_bundle, tiny_config
from sclvi.bank_file import BankHeader
from sclvi.bundle import add_bank, load_bundle, record
from sclvi.config import build_config
from sclvi.dataset import read_dataset
from sclvi.errors import BundleError
from sclvi.knn.buckets import grid_positions
from sclvi.levels import BankLevels
from sclvi.memory_bank import bank_levels
from sclvi.retrieval import image_rows
from sclvi.scorer import AnomalyScorer


def test_the_factor_is_the_retrieved_images_mean_level_over_the_banks_median():
    levels = BankLevels(np.array([0, 2, 5]), np.array([1.0, 2.0, 4.0]), bank_images=6)
    assert levels.factor(np.array([0, 1, 2])) == pytest.approx(0.75)  # images 0 and 2 carry levels 1 and 2; median 2
    assert levels.factor(np.array([1, 3, 4])) == 1.0  # none carries a level: left as it is
    assert BankLevels(np.array([0, 1, 2]), np.array([0.01, 1.0, 1.0]), 3).factor(np.array([0])) == 0.25  # clipped
    assert BankLevels.from_manifest(levels.as_dict()).factor(np.array([5])) == pytest.approx(2.0)
    for bad in ({"images": [0, 2], "levels": [1.0, float("nan")], "bank_images": 6},
                {"images": [0, 7], "levels": [1.0, 2.0], "bank_images": 6},  # outside the bank
                {"images": [2, 0], "levels": [1.0, 2.0], "bank_images": 6},
                {"images": [0, 2], "levels": [1.0, 0.0], "bank_images": 6},
                {"images": [0, 2], "bank_images": 6}):
        with pytest.raises(BundleError, match="levels"):
            BankLevels.from_manifest(bad)


def test_levels_are_each_images_score_against_the_bank_without_it_and_divide_the_map(tmp_path, synthetic_object):
    """Built with the bank (train -> bank): a bank image's level is the median map it gets from a bank that never
    held it; a frame's map is the plain map divided by sqrt(its retrieved images' level / the median level)."""
    train = read_dataset(synthetic_object).train  # 6 images; K = 5: leaving one out, the other 5 are searched
    bundle = make_bundle(tmp_path / "b", tiny_config(96, bank={"retrieve": 5, "level_norm": 0.5}), train)
    levels = BankLevels.from_manifest(load_bundle(bundle.path).manifest["levels"])
    assert levels.bank_images == 6 and list(levels.images) == list(range(6))
    plain = AnomalyScorer(bundle, None, level_norm=0.0)
    codes = {s: plain.bundle.bank_data(s)[:2] for s in plain.grids}
    for i in (0, 4):
        rest = {s: (c[np.setdiff1d(np.arange(len(c)), image_rows(np.array([i]), plain.grids[s].count))],
                    p[np.setdiff1d(np.arange(len(p)), image_rows(np.array([i]), plain.grids[s].count))])
                for s, (c, p) in codes.items()}
        without = AnomalyScorer(bundle, None, banks=rest).score_codes(*plain.bank_image_codes(i))
        assert levels.levels[i] == pytest.approx(float(np.median(without.anomaly_map)), rel=1e-5)
    assert np.ptp(levels.levels) > 0.05 * levels.reference  # the images differ: the division below is not by 1

    normalised = AnomalyScorer(bundle, None)
    frame = plain.bank_image_codes(2)
    frame = tuple(c + np.float32(0.05) for c in frame)  # a frame near bank image 2, not in the bank
    images = normalised.frame_images(*frame)
    factor = levels.factor(images)
    assert abs(factor - 1) > 0.01
    got, want = normalised.score_codes(*frame), plain.score_codes(*frame)
    np.testing.assert_allclose(got.anomaly_map, want.anomaly_map / factor ** 0.5, rtol=1e-5)
    assert got.score == pytest.approx(want.score / factor ** 0.5, rel=1e-5)


def test_a_rare_variant_of_good_part_no_longer_outranks_a_defect_on_a_common_one(tmp_path):
    """One bank, two variants: 9 images of a uniform finish A and 3 of a coarse, varied finish B (codes spread 4x
    wider). A good part of B scores high all over; a part of A with a small defect scores lower than that, so a
    threshold that passes good B parts passes the defect. Divided by their retrieved images' level, the defect
    outranks the good B part."""
    cfg = tiny_config(96, bank={"retrieve": 3, "level_norm": 0.5})
    bundle = make_bundle(tmp_path / "b", cfg)
    scorer = AnomalyScorer(bundle, None, level_norm=0.0)
    shapes = {s: g.shape for s, g in scorer.grids.items()}
    rng = np.random.default_rng(0)
    centre, spread = {"A": rng.normal(0, 1, 16), "B": rng.normal(0, 1, 16) + 3}, {"A": 0.1, "B": 0.4}

    def frame(variant: str, scale: str) -> np.ndarray:
        return (centre[variant] + rng.normal(0, spread[variant], (*shapes[scale], 16))).astype(np.float32)

    for s, shape in shapes.items():
        codes = np.stack([frame("A" if i % 4 else "B", s) for i in range(12)]).reshape(-1, 16)  # B: images 0, 4, 8
        positions = np.tile(grid_positions(shape), (12, 1))
        add_bank(bundle, codes, positions, BankHeader(s, scorer.grids[s].patch, scorer.grids[s].stride, list(shape),
                                                      16, len(codes), "float32"))
    record(bundle, "levels", bank_levels(bundle))
    good_b = {s: frame("B", s) for s in shapes}
    defect_a = {s: frame("A", s) for s in shapes}
    defect_a["small"][2:4, 2:4] += np.float32(1.3)  # a small defect: 4 patches moved off the finish
    defect_a["large"][1, 1] += np.float32(1.3)

    plain = AnomalyScorer(load_bundle(bundle.path), None, level_norm=0.0)
    normalised = AnomalyScorer(load_bundle(bundle.path), None)
    assert plain.score_codes(defect_a["small"], defect_a["large"]).score < plain.score_codes(good_b["small"], good_b["large"]).score
    assert (normalised.score_codes(defect_a["small"], defect_a["large"]).score
            > normalised.score_codes(good_b["small"], good_b["large"]).score)


def test_product_presets_normalise_the_level_and_the_paper_does_not(tmp_path, synthetic_object):
    assert build_config("dense-lite").bank.level_norm == 0.5 and build_config("paper").bank.level_norm == 0.0
    train = read_dataset(synthetic_object).train
    coreset = make_bundle(tmp_path / "c", tiny_config(96, bank={"retrieve": 2, "level_norm": 0.5, "coreset_ratio": 0.5}),
                          train)
    # half of 6 images' codes is 3 images' worth: only the bank's header says these are not whole images
    assert coreset.manifest["levels"] is None and AnomalyScorer(coreset, None).retrieved_images is None
