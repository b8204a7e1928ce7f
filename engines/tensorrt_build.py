"""Build FP16 TensorRT engines for both encoders, on the machine that will run them.

One build path for TensorRT 10.3 (JetPack 6) and 11.x: a strongly typed network parsed from the FP16
ONNX graph (FP32 inputs/outputs). TensorRT 11 removed BuilderFlag.FP16, and a strongly typed network
takes its precision from the graph on both versions, so no precision flag is set at all.

Per engine: an optimisation profile whose `opt` batch is the per-frame count of the configured geometry
(3249 main-encoder patches at 256x256 stride 4; 169 secondary grids), a persisted timing cache, and a
metadata file (TensorRT version, GPU, compute capability, precision, shapes) checked before loading.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sclvi.bundle import ModelBundle, engine_record, register_files
from sclvi.engines.device_memory import DeviceMemory
from sclvi.errors import BackendError
from sclvi.geometry import TwoScaleGeometry

log = logging.getLogger(__name__)

TIMING_CACHE = "engines/tensorrt.timing-cache"


def engine_shapes(bundle: ModelBundle, max_frames: int = 1) -> dict[str, dict[str, Any]]:
    """Input name and (min, opt, max) shapes of each engine for the bundle's geometry."""
    g = TwoScaleGeometry.from_config(bundle.config.geometry)
    dim = bundle.config.encoder.embed_dim
    return {
        "main": {"input": "patches", "output": "codes", "item": [3, 32, 32],
                 "min": 1, "opt": g.small.count, "max": g.small.count * max_frames},
        "secondary": {"input": "grids", "output": "codes", "item": [dim, 2, 2],
                      "min": 1, "opt": g.large.count, "max": g.large.count * max_frames},
    }


def _trt():
    try:
        import tensorrt
    except ImportError:
        raise BackendError(
            "TensorRT is not installed here: on a Jetson use the JetPack system package (python3-libnvinfer), "
            "on an x86 GPU box `pip install tensorrt`"
        ) from None
    return tensorrt


def build_tensorrt(
    bundle: ModelBundle, memory: DeviceMemory | None = None, max_frames: int = 1, workspace_mb: int = 1024
) -> dict[str, Any]:
    """Build and store engines/{main,secondary}.plan (+ .json metadata) from the FP16 ONNX graphs.
    `memory` names the GPU the engines are built for (default: the current CUDA device)."""
    trt = _trt()
    if memory is None:
        from sclvi.engines.device_memory import NumbaCudaMemory

        memory = NumbaCudaMemory()
    onnx_record = engine_record(bundle, "onnx")
    if onnx_record is None:
        raise BackendError(f"build the ONNX graphs first: `sclvi build-engines {bundle.path}`")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_path = bundle.path / TIMING_CACHE
    gpu, capability = memory.device_name()
    shapes = engine_shapes(bundle, max_frames)
    files, meta_all = [], {}
    for name, shape in shapes.items():
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        onnx_path = bundle.path / onnx_record["files"][f"{name}.fp16"]
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, False)
        profile = builder.create_optimization_profile()
        item = tuple(shape["item"])
        profile.set_shape(shape["input"], (shape["min"], *item), (shape["opt"], *item), (shape["max"], *item))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendError(f"TensorRT failed to build the {name} engine (see the TensorRT log above)")
        plan_path = bundle.path / f"engines/{name}.plan"
        plan_path.write_bytes(bytes(plan))
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        meta = {
            "tensorrt": trt.__version__, "gpu": gpu, "compute_capability": capability, "precision": "fp16",
            "strongly_typed": True, "onnx": onnx_record["files"][f"{name}.fp16"], **shape,
        }
        (bundle.path / f"engines/{name}.plan.json").write_text(json.dumps(meta, indent=2))
        files += [f"engines/{name}.plan", f"engines/{name}.plan.json"]
        meta_all[name] = meta
        log.info("TensorRT %s engine: opt batch %d, max %d, %s (sm %s)", name, shape["opt"], shape["max"], gpu, capability)
    record = {"weights_sha256": onnx_record["weights_sha256"], "engines": meta_all,
              "files": {n: f"engines/{n}.plan" for n in shapes}}
    register_files(bundle, files, {"tensorrt": record})
    return record
