"""The Numba CUDA kernel: under the CUDA simulator in CI, on the real GPU where there is one."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent

SIM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from knn_cases import cases
    from numba import cuda
    from sclvi.config import ScoringConfig
    from sclvi.knn.numba_cuda import CudaPatchScorer
    from sclvi.knn.reference import NumpyPatchScorer
    out = {}
    for name, q, bank, pos, grid in cases(n_queries=40, n_bank=300, dim=8):
        for formula in ("paper", "authors"):
            s = ScoringConfig(formula=formula)
            ref = NumpyPatchScorer(bank, pos, grid, s).score(q)
            got = CudaPatchScorer(bank, s, splits=3).score(q)
            out[f"{name}/{formula}"] = float(np.abs(got - ref).max())
    name, q, bank, pos, grid = cases(n_queries=40, n_bank=300, dim=8)[0]
    ref = NumpyPatchScorer(bank, pos, grid, ScoringConfig()).score(q)
    half = CudaPatchScorer(bank, ScoringConfig(gpu_bank_dtype="float16")).score(q)
    out["fp16_rel"] = float(np.abs(half - ref).max() / ref.mean())
    device_q = cuda.to_device(q)  # a device array, as an engine's output buffer would be
    out["device_input"] = float(np.abs(CudaPatchScorer(bank, ScoringConfig()).score(device_q) - ref).max())
    rows = np.arange(40, 260, 2)  # image retrieval: a sub-bank gathered on the device
    sub_ref = NumpyPatchScorer(bank[rows], pos[rows], grid, ScoringConfig()).score(q)
    out["restricted"] = float(np.abs(CudaPatchScorer(bank, ScoringConfig()).restricted(rows).score(q) - sub_ref).max())
    # position windows (aligned parts): every case (the simulator is slow: fewer queries and codes; the authors'
    # formula once, its device function is shared with the unwindowed kernel tested above)
    for name, q, bank, pos, grid in cases(n_queries=20, n_bank=150, dim=8):
        qpos = pos[:20]
        for formula in ("paper", "authors") if name == "random" else ("paper",):
            s = ScoringConfig(formula=formula, position_window=1, eta=5)
            ref = NumpyPatchScorer(bank, pos, grid, s).score(q, qpos)
            got = CudaPatchScorer(bank, s, positions=pos, grid=grid).score(q, qpos)
            out[f"window/{name}/{formula}"] = float(np.abs(got - ref).max())
    name, q, bank, pos, grid = cases(n_queries=20, n_bank=150, dim=8)[0]
    s = ScoringConfig(position_window=1, eta=5)
    scorer = CudaPatchScorer(bank, s, positions=pos, grid=grid)
    rows = np.arange(10, 140, 2)  # image retrieval, then a retrieval of that: rows of the full bank
    sub_ref = NumpyPatchScorer(bank[rows], pos[rows], grid, s).score(q, qpos)
    out["window/restricted"] = float(np.abs(scorer.restricted(rows).score(q, qpos) - sub_ref).max())
    twice = np.arange(0, len(rows), 2)
    ref2 = NumpyPatchScorer(bank[rows[twice]], pos[rows[twice]], grid, s).score(q, qpos)
    out["window/restricted twice"] = float(np.abs(scorer.restricted(rows).restricted(twice).score(q, qpos) - ref2).max())
    half = CudaPatchScorer(bank, ScoringConfig(position_window=1, eta=5, gpu_bank_dtype="float16"), positions=pos, grid=grid)
    full = scorer.score(q, qpos)  # the windowed kernel reading an FP16 bank
    out["fp16_rel window"] = float(np.abs(half.score(q, qpos) - full).max() / full.mean())
    try:  # a window holding fewer than eta codes: the CPU kernels' error, not a score
        CudaPatchScorer(bank[:30], ScoringConfig(position_window=0, eta=5), positions=pos[:30], grid=grid).score(q, qpos)
        out["short window raises"] = 1.0
    except ValueError as exc:
        out["short window raises"] = 0.0 if "fewer than eta" in str(exc) else 1.0
    print(json.dumps(out))
    """
)


def test_cuda_kernel_under_the_simulator_equals_reference():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    run = subprocess.run([sys.executable, "-c", SIM_SCRIPT, str(HERE)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout.strip().splitlines()[-1])
    for key, err in res.items():
        if key.startswith("fp16_rel"):
            assert err < 2e-3, res  # FP16 bank storage: scores move by well under 0.2 %
        else:
            assert err < 1e-9, (key, err)


def _real_gpu() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    from sclvi.knn.numba_cuda import cuda_available

    return cuda_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _real_gpu(), reason="needs a CUDA GPU (numba-cuda)")
def test_cuda_kernel_on_gpu_equals_reference_at_frame_scale():
    from sclvi.config import ScoringConfig
    from sclvi.knn.numba_cpu import NumbaPatchScorer
    from sclvi.knn.numba_cuda import CudaPatchScorer

    rng = np.random.default_rng(0)
    bank = rng.normal(size=(50_000, 64)).astype(np.float32)
    q = rng.normal(size=(3249, 64)).astype(np.float32)
    s = ScoringConfig()
    ref = NumbaPatchScorer(bank, np.zeros((len(bank), 2), np.int16), 1, s).score(q)
    np.testing.assert_allclose(CudaPatchScorer(bank, s).score(q), ref, atol=1e-9)
    half = CudaPatchScorer(bank, ScoringConfig(gpu_bank_dtype="float16")).score(q)
    assert np.abs(half - ref).max() / ref.mean() < 2e-3
    rows = np.arange(0, len(bank), 3)  # image retrieval's sub-bank, gathered on the device
    np.testing.assert_allclose(CudaPatchScorer(bank, s).restricted(rows).score(q),
                               NumbaPatchScorer(bank[rows], np.zeros((len(rows), 2), np.int16), 1, s).score(q), atol=1e-9)
    # a +-2 cell window on the 57 x 57 grid of a 256 px frame at stride 4, 15 images in the bank
    from sclvi.knn.buckets import grid_positions

    qpos = grid_positions(57)
    wbank = rng.normal(size=(15 * len(qpos), 64)).astype(np.float32)
    wpos = np.tile(qpos, (15, 1))
    w = ScoringConfig(position_window=2)
    ref = NumbaPatchScorer(wbank, wpos, 57, w).score(q, qpos)
    gpu = CudaPatchScorer(wbank, w, positions=wpos, grid=57)
    np.testing.assert_allclose(gpu.score(q, qpos), ref, atol=1e-9)
    kept = np.flatnonzero(np.repeat(np.arange(15) % 2 == 0, len(qpos)))  # image retrieval: 8 of the 15 images
    np.testing.assert_allclose(gpu.restricted(kept).score(q, qpos),
                               NumbaPatchScorer(wbank[kept], wpos[kept], 57, w).score(q, qpos), atol=1e-9)
