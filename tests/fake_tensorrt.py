"""A small stand-in for the `tensorrt` module that records the calls made to it.

It implements only the API surface our builder and backend use (TensorRT 10.3 / 11 names). Like
TensorRT 11 it has no BuilderFlag.FP16 and no `set_flag`, so a build path relying on them fails here.
Its "plan" carries the parsed ONNX graph, and its execution context runs that graph with ONNX Runtime on
the memory behind the tensor addresses, so the backend's address and shape plumbing is really exercised.
"""

from __future__ import annotations

import ctypes
import enum
import pickle

import numpy as np

__version__ = "10.3.0"
CALLS: list[tuple] = []


class Logger:
    WARNING = 2

    def __init__(self, level: int) -> None:
        self.level = level


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 5


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.onnx = b""


class OnnxParser:
    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network = network
        self.num_errors = 0

    def parse(self, data: bytes) -> bool:
        CALLS.append(("parse", len(data)))
        self.network.onnx = data
        return data[:1] != b"X"

    def get_error(self, i: int) -> str:
        return "fake parse error"


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+"


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's own names
        CALLS.append(("set_shape", name, tuple(min), tuple(opt), tuple(max)))
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class _Config:
    def __init__(self) -> None:
        self.profiles: list[_Profile] = []
        self.cache: _TimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        CALLS.append(("workspace", size))

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        CALLS.append(("create_timing_cache", bytes(data)))
        return _TimingCache(bytes(data))

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        return self.cache

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger: Logger) -> None:
        pass

    def create_network(self, flags: int) -> _Network:
        CALLS.append(("create_network", flags))
        return _Network(flags)

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config):
        (name, (mn, opt, mx)), = config.profiles[0].shapes.items()
        return pickle.dumps({"onnx": network.onnx, "input": name, "max": mx})


class _Context:
    def __init__(self, plan: dict) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
        self.addresses: dict[str, int] = {}
        self.shape: tuple | None = None

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        CALLS.append(("set_tensor_address", name, ptr))
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        CALLS.append(("set_input_shape", name, tuple(shape)))
        self.shape = tuple(shape)
        return True

    def execute_async_v3(self, stream: int) -> bool:
        CALLS.append(("execute_async_v3", stream))
        inp = self.session.get_inputs()[0].name
        count = int(np.prod(self.shape))
        x = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses[inp])).reshape(self.shape)
        y = self.session.run(None, {inp: x.copy()})[0].astype(np.float32)
        out = np.ctypeslib.as_array((ctypes.c_float * y.size).from_address(self.addresses["codes"]))
        out[:] = y.ravel()
        return True


class _Engine:
    def __init__(self, plan: dict) -> None:
        self.plan = plan
        self.num_io_tensors = 2

    def get_tensor_name(self, i: int) -> str:
        return [self.plan["input"], "codes"][i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.plan["input"] else TensorIOMode.OUTPUT

    def create_execution_context(self) -> _Context:
        return _Context(self.plan)


class Runtime:
    def __init__(self, logger: Logger) -> None:
        pass

    def deserialize_cuda_engine(self, data: bytes):
        CALLS.append(("deserialize", len(data)))
        try:
            return _Engine(pickle.loads(data))
        except Exception:
            return None
