"""Encoder backends behind one interface (`sclvi.embedding.EncoderBackend`).

The torch reference backend is here now; ONNX Runtime and TensorRT backends join it (engines issue).
Heavy packages are imported lazily so a CPU-only install never needs them.
"""

from __future__ import annotations

import importlib.util
import logging

from sclvi.bundle import ModelBundle
from sclvi.embedding import EncoderBackend
from sclvi.errors import BackendError

log = logging.getLogger(__name__)

BACKENDS = ("torch",)


def available_backends() -> list[str]:
    found = []
    if importlib.util.find_spec("torch") is not None:
        found.append("torch")
    return found


def load_backend(bundle: ModelBundle, name: str = "auto", threads: int = 0) -> EncoderBackend:
    """The named backend, or the best one installed for `auto`; the choice is logged."""
    found = available_backends()
    if name == "auto":
        if not found:
            raise BackendError(
                "no encoder backend is installed: install the torch extra (pip install 'sclvi[train]')"
            )
        name = found[0]
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if name not in found:
        raise BackendError(f"backend {name!r} is not installed here (installed: {found or 'none'})")
    from sclvi.engines.torch_backend import TorchBackend

    backend = TorchBackend(bundle, threads=threads)
    log.info("encoder backend: %s", backend.name)
    return backend
