"""Real TensorRT engines on a real GPU. Skipped where TensorRT or a GPU is absent (CI, most dev boxes).

On a machine with both: `pytest tests/test_tensorrt_gpu.py -v` is the first thing to run.
"""

import importlib.util

import numpy as np
import pytest

from conftest import make_bundle, tiny_config
from sclvi.knn.numba_cuda import cuda_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed"),
    pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU"),
]


def test_fp16_engines_match_onnx_runtime_and_feed_the_gpu_knn(tmp_path):
    from sclvi.bundle import load_bundle
    from sclvi.config import ScoringConfig
    from sclvi.engines.device_memory import NumbaCudaMemory
    from sclvi.engines.export import export_onnx
    from sclvi.engines.onnx_backend import OnnxRuntimeBackend
    from sclvi.engines.tensorrt_backend import TensorRTBackend
    from sclvi.engines.tensorrt_build import build_tensorrt
    from sclvi.knn.numba_cpu import NumbaPatchScorer
    from sclvi.knn.numba_cuda import CudaPatchScorer

    bundle = make_bundle(tmp_path / "b", tiny_config(256))
    export_onnx(bundle)
    memory = NumbaCudaMemory()
    build_tensorrt(load_bundle(bundle.path), memory)
    bundle = load_bundle(bundle.path)
    trt_backend = TensorRTBackend(bundle, memory)
    x = np.random.default_rng(0).normal(scale=0.5, size=(3249, 3, 32, 32)).astype(np.float32)
    got, ref = trt_backend.encode_small(x), OnnxRuntimeBackend(bundle).encode_small(x)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999
    # device output straight into the GPU-resident k-NN, no host round trip
    device_codes = trt_backend.encode_small_device(memory.to_device(x), len(x))
    bank = np.random.default_rng(1).normal(size=(5000, 16)).astype(np.float32)
    gpu = CudaPatchScorer(bank, ScoringConfig()).score(device_codes)
    cpu = NumbaPatchScorer(bank, np.zeros((5000, 2), np.int16), 1, ScoringConfig()).score(got)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5)
