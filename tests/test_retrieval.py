"""Image retrieval before the patch k-NN (bank.retrieve): the right images, the same kernels, and the case it is
for — a line with two variants, where one variant's texture on the other's part hid among the wrong neighbours."""

import logging

import numpy as np
import pytest

from conftest import make_bundle, tiny_config
from knn_cases import cases
from sclvi.config import ScoringConfig, build_config
from sclvi.errors import BundleError
from sclvi.knn.buckets import grid_positions
from sclvi.knn.numba_cpu import NumbaPatchScorer
from sclvi.knn.reference import NumpyPatchScorer
from sclvi.retrieval import ImageRetrieval, image_rows
from sclvi.scorer import AnomalyScorer


def test_retrieval_finds_the_frames_own_variant():
    rng = np.random.default_rng(0)
    cells = {"small": 9, "large": 4}
    # 10 images of variant A (codes around +1), 10 of variant B (around -1), interleaved in the bank
    sign = np.where(np.arange(20) % 2 == 0, 1.0, -1.0)
    banks = {s: (sign[:, None, None] + rng.normal(0, 0.3, (20, c, 8))).reshape(-1, 8).astype(np.float32)
             for s, c in cells.items()}
    r = ImageRetrieval.from_banks(banks, cells, k=5)
    near = r.nearest(1 + rng.normal(0, 0.3, (9, 8)), 1 + rng.normal(0, 0.3, (4, 8)))
    assert len(near) == 5 and (near % 2 == 0).all() and (np.diff(near) > 0).all()
    assert np.array_equal(image_rows(np.array([0, 3]), cells["large"]), [0, 1, 2, 3, 12, 13, 14, 15])
    with pytest.raises(BundleError, match="image by image"):  # a coreset bank has no whole images left
        ImageRetrieval.from_banks({"small": banks["small"][:-1], "large": banks["large"]}, cells, k=5)


@pytest.mark.parametrize("window", [None, 1])
@pytest.mark.parametrize("images", [range(1, 11), [0, 2, 3, 7, 11]])  # a run of images, scattered ones
def test_restricted_kernel_equals_a_kernel_built_on_the_rows(window, images):
    name, q, bank, pos, grid = cases(n_queries=60, n_bank=300, dim=8)[0]
    s = ScoringConfig(position_window=window, eta=5)
    rows = (np.array(images)[:, None] * 25 + np.arange(25)).ravel()  # whole images of the 25-cell grid
    qpos = pos[:60]
    want = NumpyPatchScorer(bank[rows], pos[rows], grid, s).score(q, qpos)
    numba = NumbaPatchScorer(bank, pos, grid, s)
    np.testing.assert_allclose(numba.restricted(rows).score(q, qpos), want, atol=1e-9)
    np.testing.assert_allclose(NumpyPatchScorer(bank, pos, grid, s).restricted(rows).score(q, qpos), want, atol=1e-12)
    assert not np.allclose(NumpyPatchScorer(bank, pos, grid, s).score(q, qpos), want)  # the restriction matters
    # restricted again: rows of the restricted bank, whether the kernel copied it or only marks it (windowed)
    twice = numba.restricted(rows).restricted(np.arange(0, len(rows), 2))
    once = rows[::2]
    np.testing.assert_allclose(twice.score(q, qpos), NumpyPatchScorer(bank[once], pos[once], grid, s).score(q, qpos), atol=1e-9)


def test_product_presets_retrieve_and_the_paper_does_not():
    assert build_config("lite").bank.retrieve == build_config("dense-lite").bank.retrieve == 50
    assert build_config("paper").bank.retrieve == 0


def test_a_defect_made_of_the_other_variant_is_found_with_retrieval(tmp_path, caplog):
    """A two-variant line, one bank: a patch of variant B's texture on a variant-A part has perfect neighbours
    in B's images, so the whole-bank search calls it normal; retrieving A's images first does not. Scored
    through AnomalyScorer (what evaluation and the edge workers call), on codes, so only the search is tested."""
    cfg = tiny_config(96, bank={"retrieve": 6})
    bundle = make_bundle(tmp_path / "bundle", cfg)
    scorer = AnomalyScorer(bundle, None, ScoringConfig(), banks={})
    shapes = {s: g.shape for s, g in scorer.grids.items()}
    rng = np.random.default_rng(0)
    centre = {"A": rng.normal(0, 1, 16), "B": rng.normal(0, 1, 16)}

    def frames(variant: str, n: int, scale: str) -> np.ndarray:
        return (centre[variant] + rng.normal(0, 0.3, (n, *shapes[scale], 16))).astype(np.float32)

    bank = {s: np.concatenate([frames("A", 6, s), frames("B", 6, s)]) for s in shapes}  # image by image
    flat = {s: (c.reshape(-1, 16), np.tile(grid_positions(shapes[s]), (12, 1))) for s, c in bank.items()}
    query = {s: frames("A", 1, s)[0] for s in shapes}
    defect = {s: q.copy() for s, q in query.items()}
    defect["small"][3:6, 3:6] = frames("B", 1, "small")[0, 3:6, 3:6]
    defect["large"][1, 1] = frames("B", 1, "large")[0, 1, 1]

    retrieving = AnomalyScorer(bundle, None, ScoringConfig(), banks=flat)
    a_only = {s: (c[: len(c) // 2], p[: len(p) // 2]) for s, (c, p) in flat.items()}
    bundle.config = cfg.model_copy(update={"bank": cfg.bank.model_copy(update={"retrieve": 0})})
    whole_bank = AnomalyScorer(bundle, None, ScoringConfig(), banks=flat)
    a_bank = AnomalyScorer(bundle, None, ScoringConfig(), banks=a_only)
    clean, found, hidden = (s.score_codes(d["small"], d["large"]).score
                            for s, d in ((retrieving, query), (retrieving, defect), (whole_bank, defect)))
    assert found > 1.8 * clean and hidden < 1.2 * clean, (clean, found, hidden)
    # retrieval picked the six A images: the same result as a bank of A's images alone
    assert found == pytest.approx(a_bank.score_codes(defect["small"], defect["large"]).score, rel=1e-9)
    assert retrieving.retrieved_images == 6 and whole_bank.retrieved_images is None  # what bench latency reports
    # the faiss-ivf kernel retrieves too (a bitmap of the kept rows on its one index; every list probed: exact)
    bundle.config = cfg
    via_index = AnomalyScorer(bundle, None, ScoringConfig(knn="faiss-ivf", ivf_nlist=4, ivf_nprobe=4), banks=flat)
    assert via_index.retrieved_images == 6
    assert via_index.score_codes(defect["small"], defect["large"]).score == pytest.approx(found, rel=1e-6)
    # a coreset bank holds no whole images: retrieval is off (logged), the whole bank is searched
    thinned = {s: (c[:-1], p[:-1]) for s, (c, p) in flat.items()}
    bundle.config = cfg
    with caplog.at_level(logging.INFO, logger="sclvi.scorer"):
        off = AnomalyScorer(bundle, None, ScoringConfig(), banks=thinned).score_codes(defect["small"], defect["large"]).score
    assert "image retrieval off" in caplog.text
    assert AnomalyScorer(bundle, None, ScoringConfig(), banks=thinned).retrieved_images is None
    bundle.config = cfg.model_copy(update={"bank": cfg.bank.model_copy(update={"retrieve": 0})})
    assert off == AnomalyScorer(bundle, None, ScoringConfig(), banks=thinned).score_codes(defect["small"], defect["large"]).score
