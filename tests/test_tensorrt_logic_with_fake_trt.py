"""The TensorRT builder's and backend's own logic, against a fake `tensorrt` that records calls.

This is not TensorRT: it checks what our code asks of TensorRT (strongly typed FP16 network, profile
shapes, timing cache, tensor addresses, version/GPU checks, error paths). The real engine tests are in
test_tensorrt_gpu.py and run where TensorRT and a GPU exist.
"""

import json
import sys

import numpy as np
import pytest

import fake_tensorrt
from conftest import make_bundle, tiny_config
from sclvi.bundle import load_bundle
from sclvi.engines.device_memory import HostMemory
from sclvi.errors import BackendError, BundleError


@pytest.fixture()
def trt(monkeypatch):
    fake_tensorrt.CALLS.clear()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    return fake_tensorrt


@pytest.fixture()
def onnx_bundle(tmp_path):
    from sclvi.engines.export import export_onnx

    bundle = make_bundle(tmp_path / "b", tiny_config(256))
    export_onnx(bundle)
    return load_bundle(bundle.path)


def _build(bundle, memory=None, **kw):
    from sclvi.engines.tensorrt_build import build_tensorrt

    return build_tensorrt(bundle, memory or HostMemory("NVIDIA H100 80GB HBM3", "9.0"), **kw)


def test_build_uses_one_strongly_typed_fp16_path_and_frame_sized_profiles(trt, onnx_bundle):
    record = _build(onnx_bundle)
    calls = trt.CALLS
    assert [c for c in calls if c[0] == "create_network"] == [("create_network", 1 << 5)] * 2
    shapes = [c for c in calls if c[0] == "set_shape"]
    # opt = the per-frame count: 57x57 = 3249 main patches, 13x13 = 169 secondary grids at 256 px
    assert shapes == [
        ("set_shape", "patches", (1, 3, 32, 32), (3249, 3, 32, 32), (3249, 3, 32, 32)),
        ("set_shape", "grids", (1, 16, 2, 2), (169, 16, 2, 2), (169, 16, 2, 2)),
    ]
    fp16 = [len((onnx_bundle.path / f"engines/{n}.fp16.onnx").read_bytes()) for n in ("main", "secondary")]
    assert [c[1] for c in calls if c[0] == "parse"] == fp16  # parsed from the FP16 graphs
    meta = json.loads((onnx_bundle.path / "engines/main.plan.json").read_text())
    assert meta["tensorrt"] == "10.3.0" and meta["gpu"] == "NVIDIA H100 80GB HBM3"
    assert meta["compute_capability"] == "9.0" and meta["precision"] == "fp16" and meta["opt"] == 3249
    assert set(record["files"]) == {"main", "secondary"}


def test_timing_cache_is_persisted_and_reused(trt, onnx_bundle):
    _build(onnx_bundle)
    first = [c[1] for c in trt.CALLS if c[0] == "create_timing_cache"]
    assert first[0] == b""  # nothing cached before the first build
    assert first[1] == b"+"  # the second engine starts from the first one's cache
    trt.CALLS.clear()
    _build(load_bundle(onnx_bundle.path), max_frames=2)
    assert [c[1] for c in trt.CALLS if c[0] == "create_timing_cache"][0] == b"++"  # read back from disk
    assert ("set_shape", "patches", (1, 3, 32, 32), (3249, 3, 32, 32), (6498, 3, 32, 32)) in trt.CALLS


def test_backend_runs_the_engine_through_tensor_addresses(trt, onnx_bundle):
    from sclvi.engines.onnx_backend import OnnxRuntimeBackend
    from sclvi.engines.tensorrt_backend import TensorRTBackend

    _build(onnx_bundle)
    bundle = load_bundle(onnx_bundle.path)
    memory = HostMemory("NVIDIA H100 80GB HBM3", "9.0")
    backend = TensorRTBackend(bundle, memory)
    x = np.random.default_rng(0).normal(size=(100, 3, 32, 32)).astype(np.float32)
    got = backend.encode_small(x)
    ref = OnnxRuntimeBackend(bundle).encode_small(x)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999  # the FP16 graph ran on our buffers and came back in order
    assert ("set_input_shape", "patches", (100, 3, 32, 32)) in trt.CALLS
    assert ("execute_async_v3", 0) in trt.CALLS
    out_ptr = [c[2] for c in trt.CALLS if c[:2] == ("set_tensor_address", "codes")]
    assert memory.pointer(backend.engines["main"].out_buf) in out_ptr
    with pytest.raises(BackendError, match="exceed the engine's profile"):
        backend.encode_small(np.zeros((3250, 3, 32, 32), np.float32))


def test_engine_from_another_gpu_or_version_says_rebuild(trt, onnx_bundle, monkeypatch):
    from sclvi.engines.tensorrt_backend import TensorRTBackend

    _build(onnx_bundle)
    bundle = load_bundle(onnx_bundle.path)
    with pytest.raises(BundleError, match="built for .*H100.* this machine has .*Orin.*rebuild"):
        TensorRTBackend(bundle, HostMemory("Orin", "8.7"))
    monkeypatch.setattr(fake_tensorrt, "__version__", "11.0.0")
    with pytest.raises(BundleError, match="rebuild"):
        TensorRTBackend(bundle, HostMemory("NVIDIA H100 80GB HBM3", "9.0"))
    assert not any(c[0] == "deserialize" for c in trt.CALLS)  # refused before TensorRT saw the plan


def test_corrupt_and_missing_plans(trt, onnx_bundle):
    from sclvi.engines.tensorrt_backend import TensorRTBackend

    _build(onnx_bundle)
    plan = onnx_bundle.path / "engines/main.plan"
    plan.write_bytes(b"garbage")
    memory = HostMemory("NVIDIA H100 80GB HBM3", "9.0")
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(onnx_bundle.path)  # the bundle's checksums catch it first
    bundle = load_bundle(onnx_bundle.path, verify=False)
    with pytest.raises(BundleError, match="could not deserialise"):
        TensorRTBackend(bundle, memory)
    plan.unlink()
    with pytest.raises(BundleError, match="build-engines"):
        load_bundle(onnx_bundle.path)


def test_parse_failure_and_no_tensorrt(trt, onnx_bundle, monkeypatch):
    fp16 = onnx_bundle.path / "engines/main.fp16.onnx"
    fp16.write_bytes(b"X" + fp16.read_bytes())
    with pytest.raises(BackendError, match="cannot parse"):
        _build(load_bundle(onnx_bundle.path, verify=False))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        _build(onnx_bundle)
