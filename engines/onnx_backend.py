"""ONNX Runtime backend: the embedded default on CPU boxes (no torch needed at run time)."""

from __future__ import annotations

import logging
import os

import numpy as np

from sclvi.bundle import ModelBundle, engine_record
from sclvi.errors import BackendError, BundleError

log = logging.getLogger(__name__)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, bundle: ModelBundle, threads: int = 0, precision: str = "fp32") -> None:
        import onnxruntime as ort

        record = engine_record(bundle, "onnx")
        if record is None:
            raise BackendError(f"bundle {bundle.path} has no ONNX engines: run `sclvi build-engines {bundle.path}`")
        opts = ort.SessionOptions()
        # Threads set explicitly: one pool, sized to the cores, so the encoder never oversubscribes the
        # CPU (inter-op parallelism would add a second pool for a graph that is a single chain).
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting after a run: the k-NN kernel runs next on the same cores, and ORT's spinning
        # threads took them from it (measured on 2 cores: k-NN 58 ms instead of ~21 ms per frame).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        suffix = ".fp16" if precision == "fp16" else ""
        self.sessions = {}
        graphs = ("main", "secondary") + (("frame",) if "frame" in record["files"] else ())
        for name in graphs:
            path = bundle.path / record["files"][f"{name}{suffix}"]
            try:
                self.sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # ORT raises its own exception types for unreadable models
                raise BundleError(f"cannot load {path} ({exc}): rebuild with `sclvi build-engines {bundle.path}`") from None
        self.inputs = {n: s.get_inputs()[0].name for n, s in self.sessions.items()}
        self.name = f"onnxruntime-{precision}"
        if "frame" in self.sessions:
            self.encode_frames = self._encode_frames  # the dense one-pass path
        log.debug("ONNX Runtime sessions with %d threads", opts.intra_op_num_threads)

    def encode_small(self, patches: np.ndarray) -> np.ndarray:
        return self.sessions["main"].run(None, {self.inputs["main"]: patches})[0]

    def encode_grid(self, grids: np.ndarray) -> np.ndarray:
        return self.sessions["secondary"].run(None, {self.inputs["secondary"]: grids})[0]

    def _encode_frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        small, large = self.sessions["frame"].run(None, {self.inputs["frame"]: frames})
        return small, large
