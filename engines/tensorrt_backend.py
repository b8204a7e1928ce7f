"""TensorRT backend: the FP16 engines of both encoders, one execution per encoder per frame.

Before TensorRT sees a plan, its metadata is checked against this machine (TensorRT version, GPU name,
compute capability): a plan built elsewhere fails with "rebuild", never a crash deep inside TensorRT.
Input and output buffers are allocated once at the profile's max batch and reused; the device variants
(`encode_small_device`, `encode_grid_device`) keep everything on the GPU for the k-NN kernel.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from sclvi.bundle import ModelBundle, engine_record
from sclvi.engines.device_memory import DeviceMemory
from sclvi.errors import BackendError, BundleError

log = logging.getLogger(__name__)


class _Engine:
    """One deserialised engine with its context, buffers and the shapes it was built for."""

    def __init__(self, trt: Any, runtime: Any, bundle: ModelBundle, name: str, memory: DeviceMemory) -> None:
        plan = bundle.path / f"engines/{name}.plan"
        meta_path = plan.with_name(plan.name + ".json")
        rebuild = f"rebuild with `sclvi build-engines {bundle.path} --tensorrt` on this machine"
        if not plan.is_file() or not meta_path.is_file():
            raise BundleError(f"TensorRT engine {plan} (or its .json) is missing: {rebuild}")
        meta = json.loads(meta_path.read_text())
        gpu, capability = memory.device_name()
        found = {"tensorrt": trt.__version__, "gpu": gpu, "compute_capability": capability}
        built = {k: meta.get(k) for k in found}
        if built != found:
            raise BundleError(f"{plan} was built for {built}, this machine has {found}: {rebuild}")
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise BundleError(f"TensorRT could not deserialise {plan} (corrupt?): {rebuild}")
        self.meta = meta
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"TensorRT could not create an execution context for {plan} (out of GPU memory?)")
        self.memory = memory
        self.input, self.output = meta["input"], meta["output"]
        modes = {engine.get_tensor_name(i): engine.get_tensor_mode(engine.get_tensor_name(i)) for i in range(engine.num_io_tensors)}
        if modes.get(self.input) != trt.TensorIOMode.INPUT or modes.get(self.output) != trt.TensorIOMode.OUTPUT:
            raise BundleError(f"{plan} has tensors {sorted(modes)}, expected {self.input} -> {self.output}: {rebuild}")
        self.max = int(meta["max"])
        self.item = tuple(meta["item"])
        self.dim = bundle.config.encoder.embed_dim
        self.in_buf = memory.empty((self.max, *self.item), np.float32)
        self.out_buf = memory.empty((self.max, self.dim), np.float32)
        self.context.set_tensor_address(self.input, memory.pointer(self.in_buf))
        self.context.set_tensor_address(self.output, memory.pointer(self.out_buf))

    def run_device(self, batch: Any, n: int) -> Any:
        """Run on `n` items already in device memory (`batch`, or the engine's own input buffer)."""
        if not 1 <= n <= self.max:
            raise BackendError(
                f"{n} items exceed the engine's profile (max {self.max}): rebuild with a larger --max-frames"
            )
        if batch is not None and batch is not self.in_buf:
            self.context.set_tensor_address(self.input, self.memory.pointer(batch))
        else:
            self.context.set_tensor_address(self.input, self.memory.pointer(self.in_buf))
        self.context.set_input_shape(self.input, (n, *self.item))
        if not self.context.execute_async_v3(self.memory.stream_handle()):
            raise BackendError(f"TensorRT execution failed for a batch of {n}")
        return self.out_buf[:n]

    def run(self, host: np.ndarray) -> np.ndarray:
        if host.shape[1:] != self.item:
            raise ValueError(f"expected (N, {', '.join(map(str, self.item))}) input, got {host.shape}")
        device = self.memory.to_device(np.ascontiguousarray(host, dtype=np.float32))
        return self.memory.to_host(self.run_device(device, len(host)))


class TensorRTBackend:
    name = "tensorrt-fp16"

    def __init__(self, bundle: ModelBundle, memory: DeviceMemory | None = None) -> None:
        from sclvi.engines.tensorrt_build import _trt

        trt = _trt()
        if engine_record(bundle, "tensorrt") is None:
            raise BackendError(f"bundle {bundle.path} has no TensorRT engines: `sclvi build-engines {bundle.path} --tensorrt`")
        if memory is None:
            from sclvi.engines.device_memory import NumbaCudaMemory

            memory = NumbaCudaMemory()
        self.memory = memory
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {name: _Engine(trt, runtime, bundle, name, memory) for name in ("main", "secondary")}
        log.info("TensorRT %s engines loaded on %s", trt.__version__, memory.device_name()[0])

    def encode_small(self, patches: np.ndarray) -> np.ndarray:
        return self.engines["main"].run(patches)

    def encode_grid(self, grids: np.ndarray) -> np.ndarray:
        return self.engines["secondary"].run(grids)

    def encode_small_device(self, patches: Any, n: int) -> Any:
        return self.engines["main"].run_device(patches, n)

    def encode_grid_device(self, grids: Any, n: int) -> Any:
        return self.engines["secondary"].run_device(grids, n)
