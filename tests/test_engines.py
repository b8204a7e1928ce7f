"""ONNX export and the CPU backends: parity with torch, the FP16 graph, selection, error paths."""

import json
import shutil

import numpy as np
import pytest

from conftest import make_bundle, tiny_config
from sclvi.bundle import load_bundle
from sclvi.dataset import read_dataset
from sclvi.engines import available_backends, load_backend
from sclvi.engines.export import export_onnx
from sclvi.errors import BackendError, BundleError
from sclvi.evaluate import embed_test_set, score_test_set
from sclvi.images import read_rgb
from sclvi.scorer import AnomalyScorer
from test_embedding_scoring import CountingBackend


@pytest.fixture()
def exported(random_bundle, synthetic_object):
    export_onnx(random_bundle, read_dataset(synthetic_object).train)
    return load_bundle(random_bundle.path)


def test_export_records_checks_and_checksums(exported):
    rec = exported.manifest["engines"]["onnx"]
    assert rec["checks"]["main_fp32_max_abs_diff"] < 1e-4
    assert rec["checks"]["main_fp16_min_cosine"] >= 0.999
    assert rec["patches_per_frame"] == 17 * 17
    assert "engines/main.fp16.onnx" in exported.manifest["files"]


def test_onnx_runtime_matches_torch_on_codes_and_anomaly_maps(exported, synthetic_object):
    torch_b, ort_b = load_backend(exported, "torch"), load_backend(exported, "onnxruntime")
    x = np.random.default_rng(0).normal(scale=0.5, size=(64, 3, 32, 32)).astype(np.float32)
    assert np.abs(ort_b.encode_small(x) - torch_b.encode_small(x)).max() < 1e-4  # stated tolerance (tanh codes in [-1, 1])
    g = np.random.default_rng(1).uniform(-1, 1, size=(9, 16, 2, 2)).astype(np.float32)
    assert np.abs(ort_b.encode_grid(g) - torch_b.encode_grid(g)).max() < 1e-4
    frame = read_rgb(sorted((synthetic_object / "test" / "spot").iterdir())[0], 96)
    a = AnomalyScorer(exported, torch_b).score([frame])[0].anomaly_map
    b = AnomalyScorer(exported, ort_b).score([frame])[0].anomaly_map
    assert np.abs(a - b).max() <= 1e-4 * a.max()  # stated tolerance: 1e-4 of the map's range


def test_fp16_graph_keeps_the_ranking(exported, synthetic_object):
    """FP16 moves scores by ~1e-3: it may swap two parts whose scores tie that closely, never two that differ
    by more (an AUROC on 11 images would turn one such tie into a 0.04 swing, so pairs are compared)."""
    ds = read_dataset(synthetic_object)
    scores, codes = {}, {}
    for name in ("onnxruntime", "onnxruntime-fp16"):
        codes[name], _ = embed_test_set(exported, ds, load_backend(exported, name))
        scores[name], _, _ = score_test_set(exported, codes[name], exported.config.scoring)
    a, b = codes["onnxruntime"].small.reshape(-1, 16), codes["onnxruntime-fp16"].small.reshape(-1, 16)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.999
    s32, s16 = scores["onnxruntime"], scores["onnxruntime-fp16"]
    spread = s32.max() - s32.min()
    assert spread > 0 and np.abs(s16 - s32).max() <= 0.01 * spread
    i, j = np.triu_indices(len(s32), 1)
    clear = np.abs(s32[i] - s32[j]) > 0.02 * spread  # not a near-tie
    assert clear.sum() >= len(i) // 2 and (np.sign(s32[i] - s32[j]) == np.sign(s16[i] - s16[j]))[clear].all()


def test_one_engine_call_per_encoder_per_frame(exported, synthetic_object):
    counting = CountingBackend(load_backend(exported, "onnxruntime"))
    frame = read_rgb(sorted((synthetic_object / "test" / "hole").iterdir())[0], 96)
    AnomalyScorer(exported, counting).score([frame])
    assert counting.calls == [("small", 289), ("grid", 9)]


def test_auto_selection_prefers_built_engines(tmp_path, exported):
    plain = make_bundle(tmp_path / "plain", tiny_config())
    assert available_backends(plain) == ["torch"]
    assert load_backend(plain).name == "torch"
    assert available_backends(exported)[:2] == ["onnxruntime", "torch"]
    assert load_backend(exported).name == "onnxruntime-fp32"
    with pytest.raises(BackendError, match="cannot run"):
        load_backend(plain, "onnxruntime")
    with pytest.raises(BackendError, match="unknown backend"):
        load_backend(plain, "openvino2")


def test_corrupt_missing_and_foreign_engine_files(tmp_path, exported):
    main = exported.path / "engines" / "main.onnx"
    data = main.read_bytes()
    main.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="checksum.*build-engines"):
        load_bundle(exported.path)
    main.unlink()
    with pytest.raises(BundleError, match="missing.*build-engines"):
        load_bundle(exported.path)
    # engines copied over from a bundle with other weights
    other = make_bundle(tmp_path / "other", tiny_config(), seed=1)
    shutil.copytree(exported.path / "engines", other.path / "engines", dirs_exist_ok=True)
    mf = other.path / "bundle.json"
    manifest = json.loads(mf.read_text())
    src = json.loads((exported.path / "bundle.json").read_text())
    manifest["engines"] = src["engines"]
    mf.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="built from other weights"):
        load_backend(load_bundle(other.path), "onnxruntime")


def test_no_gpu_is_a_clear_backend_error():
    from sclvi.engines.device_memory import NumbaCudaMemory
    from sclvi.knn.numba_cuda import cuda_available

    if cuda_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(BackendError, match="no usable CUDA GPU"):
        NumbaCudaMemory()


def test_a_numba_cuda_stream_handle_becomes_the_pointer_tensorrt_takes():
    """numba-cuda >= 0.2x hands out cuda.bindings CUstream handles (no `.value`: `handle.value` raised on every
    TensorRT call on a real GPU); older releases a ctypes c_void_p. Both, and the default stream, give the int."""
    import ctypes

    from sclvi.engines.device_memory import stream_pointer

    assert stream_pointer(ctypes.c_void_p(0x7F00_1234)) == 0x7F00_1234
    assert stream_pointer(ctypes.c_void_p(None)) == 0  # the default stream
    driver = pytest.importorskip("cuda.bindings.driver")  # cuda-python: what numba-cuda itself imports
    assert stream_pointer(driver.CUstream(0x7F00_1234)) == 0x7F00_1234
    assert stream_pointer(driver.CUstream(0)) == 0
