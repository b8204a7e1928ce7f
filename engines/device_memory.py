"""The one device-memory layer of the GPU path: Numba CUDA device arrays on one CUDA stream.

Why Numba CUDA: it installs from PyPI anywhere (pycuda needs a CUDA toolkit to build), its device arrays
expose `__cuda_array_interface__` and raw pointers (what TensorRT's `set_tensor_address` takes), and the
k-NN kernel is a Numba CUDA kernel already: engine outputs, gather kernels and the GPU-resident memory
bank share buffers and one stream with no host round trip.

`HostMemory` implements the same calls on host memory; the TensorRT backend's own logic is tested with it
(and a fake `tensorrt`) where no GPU exists.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from sclvi.errors import BackendError


class DeviceMemory(Protocol):
    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any: ...

    def to_device(self, host: np.ndarray) -> Any: ...

    def to_host(self, array: Any) -> np.ndarray: ...

    def pointer(self, array: Any) -> int: ...

    def stream_handle(self) -> int: ...

    def synchronize(self) -> None: ...

    def device_name(self) -> tuple[str, str]:
        """(GPU name, compute capability as 'major.minor')."""
        ...


def stream_pointer(handle: Any) -> int:
    """A Numba CUDA stream's handle as the integer TensorRT's `execute_async_v3` takes. numba-cuda 0.20 gives a
    ctypes `c_void_p` (`.value`, None for the default stream); the releases since use NVIDIA's cuda.bindings,
    whose `CUstream` has no `.value` but converts with int()."""
    value = handle.value if hasattr(handle, "value") else handle
    return int(value or 0)


class NumbaCudaMemory:
    def __init__(self) -> None:
        from numba import cuda

        if not cuda.is_available():
            raise BackendError(
                "no usable CUDA GPU here (numba-cuda sees none): TensorRT engines and the GPU k-NN need one; "
                "check the NVIDIA driver, or use the onnxruntime backend"
            )
        self.cuda = cuda
        self.stream = cuda.stream()

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.cuda.device_array(shape, dtype=dtype, stream=self.stream)

    def to_device(self, host: np.ndarray) -> Any:
        if hasattr(host, "__cuda_array_interface__"):
            return self.cuda.as_cuda_array(host)
        return self.cuda.to_device(np.ascontiguousarray(host), stream=self.stream)

    def to_host(self, array: Any) -> np.ndarray:
        out = array.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        return out

    def pointer(self, array: Any) -> int:
        return int(array.__cuda_array_interface__["data"][0])

    def stream_handle(self) -> int:
        return stream_pointer(self.stream.handle)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def device_name(self) -> tuple[str, str]:
        dev = self.cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        major, minor = dev.compute_capability
        return name, f"{major}.{minor}"


class HostMemory:
    """Host arrays standing in for device arrays (pointers are real addresses of host memory)."""

    def __init__(self, name: str = "host", capability: str = "0.0") -> None:
        self._name = (name, capability)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def to_device(self, host: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(host).copy()

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return np.array(array)

    def pointer(self, array: np.ndarray) -> int:
        return int(array.ctypes.data)

    def stream_handle(self) -> int:
        return 0

    def synchronize(self) -> None:
        pass

    def device_name(self) -> tuple[str, str]:
        return self._name
