"""The 12-class relative-position task, its baselines, and the patch-SVDD twins."""

from collections import Counter

import numpy as np
import pytest

from sclvi.errors import ConfigError
from sclvi.train.pretext import JIGSAW8_CLASSES, SCL12_CLASSES, PretextSampler, scl12_pair_table


def test_36_pairs_collapse_to_12_classes_in_the_authors_order():
    table = scl12_pair_table()
    assert len(table) == 36
    assert sorted(set(table[:, 2])) == list(range(12))
    order = [(0, 1), (1, 0), (0, 2), (2, 0), (1, 1), (1, -1), (1, 2), (1, -2), (2, 1), (2, -1), (2, 2), (2, -2)]
    assert [SCL12_CLASSES[d] for d in order] == list(range(12))
    # how many unordered pairs fall into each displacement class
    counts = Counter(table[:, 2].tolist())
    assert [counts[c] for c in range(12)] == [6, 6, 3, 3, 4, 4, 2, 2, 2, 2, 1, 1]


def test_the_papers_example_pairs_share_one_class():
    cls = {(i, j): c for i, j, c in scl12_pair_table()}
    same = {cls[(1, 3)], cls[(2, 4)], cls[(4, 6)], cls[(5, 7)]}
    assert same == {5}
    assert [p for p, c in cls.items() if c == 5] == [(1, 3), (2, 4), (4, 6), (5, 7)]


@pytest.mark.parametrize("patch", [32, 64])
def test_grid_pairs_are_inside_the_image_and_match_their_label(patch):
    s = PretextSampler(n_images=5, image_hw=256, jitter_frac=0.25, svdd_shift_frac=1 / 32, seed=3)
    pairs = s.grid_pairs("scl12", patch, 2000)
    for corners in (pairs.first, pairs.second):
        assert corners.min() >= 0 and corners.max() <= 256 - patch
    spacing = patch - s.jitter(patch)
    d = np.rint((pairs.second - pairs.first) / spacing).astype(int)
    decoded = [SCL12_CLASSES[(int(a), int(b))] for a, b in d]
    assert decoded == pairs.label.tolist()
    assert set(pairs.label.tolist()) == set(range(12))
    # jitter really varies the cells (0..J px), so boundaries cannot be a shortcut
    offsets = (pairs.second - pairs.first) - d * spacing
    assert offsets.min() == -s.jitter(patch) and offsets.max() == s.jitter(patch)


def test_scl12_classes_are_drawn_uniformly():
    # Drawing the 36 pairs uniformly gave a 6:1 class prior (majority guess 1/6, not the 1/12 reported as chance).
    pairs = PretextSampler(5, 256, 0.25, 1 / 32, seed=1).grid_pairs("scl12", 32, 24000)
    counts = np.bincount(pairs.label, minlength=12)
    assert counts.min() > 1800 and counts.max() < 2200, counts


def test_jigsaw8_pairs_the_centre_with_a_neighbour():
    s = PretextSampler(5, 256, 0.25, 1 / 32, seed=0)
    pairs = s.grid_pairs("jigsaw8", 32, 500)
    d = np.rint((pairs.second - pairs.first) / (32 - s.jitter(32))).astype(int)
    assert [JIGSAW8_CLASSES[(int(a), int(b))] for a, b in d] == pairs.label.tolist()
    assert set(pairs.label.tolist()) == set(range(8))


def test_svdd_twins_are_shifted_by_a_few_pixels_never_zero():
    s = PretextSampler(5, 96, 0.25, 1 / 32, seed=0)
    for patch, most in ((32, 1), (64, 2)):
        t = s.svdd_twins(patch, 3000)
        shift = np.abs(t.second - t.first)
        assert (shift.max(axis=1) > 0).all()
        assert shift.max() <= most  # at a border the twin flips to the other side, same size
        assert t.second.min() >= 0 and t.second.max() <= 96 - patch


def test_same_seed_same_samples_and_too_small_images_are_refused():
    a = PretextSampler(4, 256, 0.25, 1 / 32, seed=7).grid_pairs("scl12", 64, 50)
    b = PretextSampler(4, 256, 0.25, 1 / 32, seed=7).grid_pairs("scl12", 64, 50)
    assert (a.first == b.first).all() and (a.label == b.label).all()
    with pytest.raises(ConfigError, match="enlarge the input"):
        PretextSampler(4, 128, 0.25, 1 / 32, seed=0).grid_pairs("scl12", 64, 4)


@pytest.mark.parametrize("mode", ["none", "frame"])
def test_the_per_pixel_mean_image_leaves_an_aligned_part_nothing_to_locate_patches_by(tmp_path, mode):
    """Why `preprocess.mean: flat` exists: on an aligned part (the synthetic set) subtracting the training
    set's per-pixel mean removes the part itself, so a patch no longer says where on the part it is, which is
    what the pretext task asks. Measured here by a nearest-centroid guess of each patch's cell (the other
    images' mean patch per cell): at or below chance on the per-pixel residuals, easy on the flat-mean input.
    (Training on the demo's set agrees: held-out 64-px pretext accuracy 0.23 with the flat mean against 0.12
    at 60 steps, chance 0.083.)"""
    from sclvi.images import mean_image, normalise, read_rgb
    from sclvi.synthetic import write_synthetic

    root = write_synthetic(tmp_path, "object", size=128, n_train=12, n_test_good=0, n_test_defect=0, seed=0)
    frames = np.stack([read_rgb(p, None) for p in sorted((root / "train" / "good").glob("*.png"))])
    accuracy = {}
    for kind in ("image", "flat"):
        mean = mean_image(frames, mode, kind)
        x = np.stack([normalise(f, mean, mode) for f in frames])
        cells = x.reshape(len(x), 3, 4, 32, 4, 32).transpose(0, 2, 4, 1, 3, 5).reshape(len(x), 16, -1)
        hits = 0
        for i in range(len(x)):
            centroids = np.delete(cells, i, axis=0).mean(axis=0)
            guess = ((cells[i][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
            hits += int((guess == np.arange(16)).sum())
        accuracy[kind] = hits / cells.shape[0] / 16
    assert accuracy["image"] <= 1 / 16 < 0.5 < accuracy["flat"], accuracy


def test_a_flat_mean_is_the_mean_gray_level_of_each_channel_over_the_frame():
    from sclvi.images import mean_image

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    per_pixel = mean_image(frames)
    flat = mean_image(frames, kind="flat")
    assert flat.shape == per_pixel.shape and flat.dtype == np.float32
    assert np.allclose(flat, frames.reshape(-1, 3).mean(0), atol=1e-3) and np.ptp(flat, axis=(0, 1)).max() == 0 and per_pixel.std() > 10
    with pytest.raises(ValueError, match="unknown mean kind"):
        mean_image(frames, kind="median")
