"""Encoder backends behind one interface (`sclvi.embedding.EncoderBackend`).

TensorRT (FP16 engines on a GPU) > ONNX Runtime (CPU) > torch (the reference), chosen automatically from
what is installed and built. Heavy packages are imported lazily so a CPU-only install never needs them.
"""

from __future__ import annotations

import importlib.util
import logging

from sclvi.bundle import ModelBundle
from sclvi.embedding import EncoderBackend
from sclvi.errors import BackendError

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "onnxruntime", "torch", "onnxruntime-fp16")  # the last: explicit only, for checks


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends(bundle: ModelBundle | None = None) -> list[str]:
    """Backends that can run here (for this bundle, when given), best first."""
    found = []
    engines = bundle.manifest.get("engines", {}) if bundle is not None else {}
    if _installed("tensorrt") and (bundle is None or "tensorrt" in engines):
        found.append("tensorrt")
    if _installed("onnxruntime") and (bundle is None or "onnx" in engines):
        found.append("onnxruntime")
    if _installed("torch"):
        found.append("torch")
    return found


def load_backend(bundle: ModelBundle, name: str = "auto", threads: int = 0) -> EncoderBackend:
    """The named backend, or the best one usable for this bundle for `auto`; the choice is logged."""
    found = available_backends(bundle)
    if name == "auto":
        if not found:
            raise BackendError(
                f"no encoder backend can run {bundle.path}: build its engines with `sclvi build-engines` "
                "(then only onnxruntime is needed) or install the torch extra (pip install 'sclvi[train]')"
            )
        name = found[0]
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    base = "onnxruntime" if name == "onnxruntime-fp16" else name
    if base not in found:
        raise BackendError(f"backend {name!r} cannot run {bundle.path} here (usable: {found or 'none'})")
    backend: EncoderBackend
    if name == "tensorrt":
        from sclvi.engines.tensorrt_backend import TensorRTBackend

        backend = TensorRTBackend(bundle)
    elif base == "onnxruntime":
        from sclvi.engines.onnx_backend import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(bundle, threads=threads, precision="fp16" if name.endswith("fp16") else "fp32")
    else:
        from sclvi.engines.torch_backend import TorchBackend

        backend = TorchBackend(bundle, threads=threads)
    log.info("encoder backend: %s (usable here: %s)", backend.name, ", ".join(found))
    return backend
