"""k-NN + affinity kernels: Numba CPU equals the NumPy reference; coreset and position windows."""

import numpy as np
import pytest

from knn_cases import cases
from sclvi.config import ScoringConfig
from sclvi.errors import BackendError
from sclvi.knn import choose_kernel, make_patch_scorer
from sclvi.knn.buckets import CellBuckets, grid_positions
from sclvi.knn.coreset import cell_coreset, greedy_coreset
from sclvi.knn.numba_cpu import NumbaPatchScorer
from sclvi.knn.reference import NumpyPatchScorer

TOL = 1e-9  # both re-rank on exact float64 distances: only summation order differs


@pytest.mark.parametrize("formula", ["paper", "authors"])
@pytest.mark.parametrize("name, q, bank, pos, grid", cases(), ids=[c[0] for c in cases()])
def test_numba_equals_reference(name, q, bank, pos, grid, formula):
    s = ScoringConfig(formula=formula, query_block=37)
    ref = NumpyPatchScorer(bank, pos, grid, s)
    fast = NumbaPatchScorer(bank, pos, grid, s, bank_block=64, threads=2)
    np.testing.assert_allclose(fast.score(q), ref.score(q), atol=TOL, rtol=TOL)
    # the same neighbours, in the same order (ties to the lower index)
    _, ref_idx = ref.search(q)
    cand = fast.candidates(q)
    assert all(set(ref_idx[r]) <= set(cand[r]) for r in range(len(q)))


def test_eta_larger_than_the_bank():
    rng = np.random.default_rng(0)
    bank, q = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(20, 8)).astype(np.float32)
    s = ScoringConfig(eta=10)
    pos = np.zeros((6, 2), np.int16)
    np.testing.assert_allclose(NumbaPatchScorer(bank, pos, 1, s).score(q), NumpyPatchScorer(bank, pos, 1, s).score(q), atol=TOL)


@pytest.mark.parametrize("tile", [(1, 1), (2, 3), (4, 4)])
@pytest.mark.parametrize("window", [0, 1, 2])
@pytest.mark.parametrize("case", range(4), ids=[c[0] for c in cases()])
def test_position_windows_equal_reference_and_restrict_the_search(window, tile, case):
    name, q, bank, pos, grid = cases(n_queries=75)[case]
    # three frames' queries in a shuffled order: the blocked kernel sorts them by tile and back
    qpos = np.tile(grid_positions(grid), (3, 1))
    perm = np.random.default_rng(window).permutation(len(q))
    q, qpos = q[perm], qpos[perm]
    s = ScoringConfig(position_window=window, eta=5)
    ref = NumpyPatchScorer(bank, pos, grid, s)
    fast = NumbaPatchScorer(bank, pos, grid, s, tile=tile)
    np.testing.assert_allclose(fast.score(q, qpos), ref.score(q, qpos), atol=TOL)
    _, idx = ref.search(q, qpos)
    assert (np.abs(pos[idx].astype(int) - qpos[:, None, :]).max(axis=2) <= window).all()
    with pytest.raises(ValueError, match="grid positions"):
        ref.score(q)


@pytest.mark.parametrize("window", [1, 2])
def test_position_windows_with_uneven_cells_equal_reference(window):
    """Cells holding 1 to 40 codes (a per-cell coreset, a clipped roi): a window's bank row is as long as its
    fullest cells, and the kernel's distance buffer must hold the longest one."""
    rng = np.random.default_rng(window)
    grid = (6, 7)
    counts = rng.integers(1, 41, size=grid[0] * grid[1])
    counts[5] = 200  # one crowded cell
    cell = np.repeat(np.arange(grid[0] * grid[1]), counts)
    pos = np.stack([cell // grid[1], cell % grid[1]], axis=1).astype(np.int16)
    perm = rng.permutation(len(pos))
    bank, pos = rng.normal(size=(len(pos), 8)).astype(np.float32), pos[perm]
    qpos = np.tile(grid_positions(grid), (2, 1))
    q = rng.normal(size=(len(qpos), 8)).astype(np.float32)
    s = ScoringConfig(position_window=window, eta=5)
    np.testing.assert_allclose(NumbaPatchScorer(bank, pos, grid, s).score(q, qpos),
                               NumpyPatchScorer(bank, pos, grid, s).score(q, qpos), atol=TOL)


def test_cell_coreset_thins_every_cell_alike():
    name, q, bank, pos, grid = cases(n_bank=2500)[0]  # 100 codes per cell
    keep = cell_coreset(bank, pos, grid, 0.2, min_per_cell=5, projection_dim=0)
    per_cell = np.bincount(pos[keep, 0].astype(int) * grid + pos[keep, 1], minlength=grid * grid)
    assert (per_cell == 20).all() and (np.diff(keep) > 0).all()
    few = cell_coreset(bank, pos, grid, 0.01, min_per_cell=5, projection_dim=0)  # 1 per cell < eta floor
    assert (np.bincount(pos[few, 0].astype(int) * grid + pos[few, 1], minlength=grid * grid) == 5).all()


def test_position_window_too_narrow_for_eta():
    name, q, bank, pos, grid = cases(n_queries=25)[0]
    s = ScoringConfig(position_window=0, eta=20)  # 12 codes per cell only
    for scorer in (NumpyPatchScorer(bank, pos, grid, s), NumbaPatchScorer(bank, pos, grid, s)):
        with pytest.raises(ValueError, match="widen the window"):
            scorer.score(q, grid_positions(grid))


def test_cell_buckets():
    pos = np.array([[0, 0], [1, 1], [0, 0], [2, 2], [1, 0]], np.int16)
    b = CellBuckets.build(pos, 3)
    assert b.candidates(0, 0, 0).tolist() == [0, 2]
    assert b.candidates(0, 0, 1).tolist() == [0, 1, 2, 4]
    assert b.candidates(2, 2, 2).tolist() == [0, 1, 2, 3, 4]


def test_coreset_is_deterministic_and_covers_every_cluster():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(8, 16))
    labels = rng.integers(0, 8, 4000)
    codes = (centres[labels] + rng.normal(scale=0.1, size=(4000, 16))).astype(np.float32)
    codes[labels == 7] = codes[labels == 7][:1]  # one rare, tight cluster
    a = greedy_coreset(codes, 0.01, projection_dim=8, seed=1, progress=False)
    b = greedy_coreset(codes, 0.01, projection_dim=8, seed=1, progress=False)
    assert a.tolist() == b.tolist() and len(a) == 40 and (np.diff(a) > 0).all()
    assert set(labels[a]) == set(range(8))  # k-center keeps the rare cluster too
    assert greedy_coreset(codes, 1.0).tolist() == list(range(4000))


def test_kernel_selection():
    assert choose_kernel(ScoringConfig(knn="numpy")) == "numpy"
    bank = np.zeros((10, 4), np.float32)
    assert make_patch_scorer(bank, np.zeros((10, 2), np.int16), 1, ScoringConfig(knn="numba")).name == "numba"
    from sclvi.knn.numba_cuda import cuda_available

    if cuda_available():  # the GPU-resident bank, windowed or not
        assert choose_kernel(ScoringConfig()) == choose_kernel(ScoringConfig(position_window=1)) == "cuda"
    else:
        assert choose_kernel(ScoringConfig()) == choose_kernel(ScoringConfig(position_window=1)) == "numba"
        with pytest.raises(BackendError, match="no CUDA device"):
            make_patch_scorer(bank, np.zeros((10, 2), np.int16), 1, ScoringConfig(knn="cuda"))


def test_auto_searches_a_large_unwindowed_bank_with_faiss_ivf_on_a_cpu(monkeypatch):
    """`auto` on a CPU: exact numba up to AUTO_IVF_PAIRS query x code pairs per frame, faiss-ivf above (when
    faiss is installed); a position window, an explicit kernel or no faiss keep their kernel."""
    import sclvi.knn as knn
    from sclvi.knn.numba_cuda import cuda_available

    if cuda_available():
        pytest.skip("on a GPU `auto` picks cuda for an unwindowed search")
    pytest.importorskip("faiss")
    big, small = knn.AUTO_IVF_PAIRS + 1, knn.AUTO_IVF_PAIRS
    assert choose_kernel(ScoringConfig(), big) == "faiss-ivf" and choose_kernel(ScoringConfig(), small) == "numba"
    assert choose_kernel(ScoringConfig(), None) == "numba"
    assert choose_kernel(ScoringConfig(position_window=2), big) == "numba"
    assert choose_kernel(ScoringConfig(knn="numba"), big) == "numba"
    monkeypatch.setattr(knn, "_faiss_installed", lambda: False)
    assert choose_kernel(ScoringConfig(), big) == "numba"


def test_scorer_counts_the_pairs_retrieval_leaves_and_plans_kernels_from_the_manifest(tmp_path, monkeypatch):
    """exact_pairs: with retrieval a frame searches K images' codes, not the bank; planned_kernels (preflight,
    benchmarks) names what AnomalyScorer really builds."""
    pytest.importorskip("faiss")
    import sclvi.knn as knn
    from sclvi.knn.numba_cuda import cuda_available
    from sclvi.scorer import AnomalyScorer, exact_pairs, planned_kernels

    assert exact_pairs(100, 1000, 10, 0) == 100 * 1000 and exact_pairs(100, 1000, 10, 20) == 100 * 200
    assert exact_pairs(100, 1000, 10, 500) == 100 * 1000  # K beyond the bank's 100 images: the whole bank
    if cuda_available():
        pytest.skip("on a GPU `auto` picks cuda")
    from sclvi.benchmarks.common import untrained_bundle
    from sclvi.benchmarks.line import bench_config
    from sclvi.dataset import read_dataset
    from sclvi.synthetic import write_synthetic

    data = write_synthetic(tmp_path / "data", "texture", size=96, n_train=6, n_test_good=1, n_test_defect=1, seed=0)
    cfg = bench_config("dense-lite", 96, 16, window="none")
    cfg = cfg.model_copy(update={"bank": cfg.bank.model_copy(update={"retrieve": 3})})
    bundle = untrained_bundle(tmp_path / "model", cfg, read_dataset(data).train)
    small, large = (bundle.manifest["banks"][s]["count"] for s in ("small", "large"))  # 6 images: 25 + 9 cells each
    assert (small, large) == (6 * 25, 6 * 9)
    # the small scale's search is 25 queries x 3 images x 25 codes; put the threshold just below it
    monkeypatch.setattr(knn, "AUTO_IVF_PAIRS", 25 * 3 * 25 - 1)
    assert planned_kernels(bundle) == {"small": "faiss-ivf", "large": "numba"}
    built = AnomalyScorer(bundle, None).knn
    assert {s: k.name for s, k in built.items()} == planned_kernels(bundle)
    monkeypatch.setattr(knn, "AUTO_IVF_PAIRS", 25 * 3 * 25)  # not above: retrieval keeps the search exact
    assert planned_kernels(bundle)["small"] == "numba"


def test_faiss_ivf_is_exact_when_every_list_is_probed_and_close_otherwise():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4, size=(20, 16))
    bank = (centres[rng.integers(0, 20, 4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    q = (centres[rng.integers(0, 20, 300)] + rng.normal(size=(300, 16))).astype(np.float32)
    pos = np.zeros((4000, 2), np.int16)
    exact = NumbaPatchScorer(bank, pos, 1, ScoringConfig()).score(q)
    every = make_patch_scorer(bank, pos, 1, ScoringConfig(knn="faiss-ivf", ivf_nlist=16, ivf_nprobe=16))
    assert every.name == "faiss-ivf"
    np.testing.assert_allclose(every.score(q), exact, atol=TOL, rtol=TOL)  # exhaustive probe = exact search
    few = make_patch_scorer(bank, pos, 1, ScoringConfig(knn="faiss-ivf", ivf_nlist=16, ivf_nprobe=2)).score(q)
    assert np.median(np.abs(few - exact) / exact) < 0.05  # approximate, not arbitrary
    with pytest.raises(ValueError, match="position window"):
        ScoringConfig(knn="faiss-ivf", position_window=2)


def test_faiss_ivf_restricted_to_some_rows_searches_only_them_and_never_comes_up_short():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(3000, 16)).astype(np.float32)
    q = rng.normal(size=(50, 16)).astype(np.float32)
    pos = np.zeros((3000, 2), np.int16)
    rows = np.sort(rng.choice(3000, 300, replace=False))
    every = ScoringConfig(knn="faiss-ivf", ivf_nlist=16, ivf_nprobe=16)
    index = make_patch_scorer(bank, pos, 1, every)
    want = NumbaPatchScorer(bank[rows], pos[rows], 1, ScoringConfig()).score(q)
    np.testing.assert_allclose(index.restricted(rows).score(q), want, atol=TOL, rtol=TOL)  # one index, a bitmap per frame
    # restricted again: rows of the restricted bank
    np.testing.assert_allclose(index.restricted(rows).restricted(np.arange(0, 300, 3)).score(q),
                               NumbaPatchScorer(bank[rows[::3]], pos[rows[::3]], 1, ScoringConfig()).score(q), atol=TOL, rtol=TOL)
    # 20 kept rows and 1 list of 16 probed: most queries find fewer than eta there and probe 4x as many lists, again
    few = rows[:20]
    one = make_patch_scorer(bank, pos, 1, every.model_copy(update={"ivf_nprobe": 1})).restricted(few)
    assert (one._search(q, 14, 1)[:, 9] < 0).any()
    np.testing.assert_allclose(one.score(q), NumbaPatchScorer(bank[few], pos[few], 1, ScoringConfig()).score(q), atol=TOL, rtol=TOL)
