"""The torch reference backend: the trained model itself, on CPU (or CUDA if asked)."""

from __future__ import annotations

import numpy as np
import torch

from sclvi.bundle import ModelBundle
from sclvi.model import DenseFrameEncoder, build_model, load_numpy_state


class TorchBackend:
    name = "torch"

    def __init__(self, bundle: ModelBundle, device: str = "cpu", threads: int = 0, chunk: int = 2048) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.chunk = chunk  # bounds activation memory; the caller still makes one call per frame
        self.model = build_model(bundle.config.encoder)
        load_numpy_state(self.model, bundle.weights)
        self.model.to(self.device).eval()
        if bundle.config.encoder.family == "dense":
            g = bundle.config.geometry
            self.frame = DenseFrameEncoder(self.model, g.small_stride, g.large_stride).to(self.device).eval()
            self.encode_frames = self._encode_frames  # the dense one-pass path (FrameEmbedder looks for it)

    @torch.inference_mode()
    def _encode_frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) -> small (B, D, n, n) and large (B, D, m, m) codes in one pass."""
        small, large = self.frame(torch.from_numpy(frames).to(self.device))
        return small.cpu().numpy(), large.cpu().numpy()

    @torch.inference_mode()
    def _run(self, module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
        out = [module(torch.from_numpy(x[i : i + self.chunk]).to(self.device)).cpu() for i in range(0, len(x), self.chunk)]
        return torch.cat(out).numpy()

    def encode_small(self, patches: np.ndarray) -> np.ndarray:
        return self._run(self.model.main, patches)

    def encode_grid(self, grids: np.ndarray) -> np.ndarray:
        return self._run(self.model.secondary, grids)
