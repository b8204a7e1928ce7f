"""The SCL-VI encoders in torch, built from the layer lists of `sclvi.architecture`.

Only training and the torch reference backend import this module; the runtime does not need torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sclvi.architecture import Layer, main_layers, secondary_layers
from sclvi.config import EncoderConfig


def _module(layer: Layer) -> nn.Module:
    if layer.kind == "conv":
        return nn.Conv2d(layer.cin, layer.cout, layer.kernel, layer.stride, layer.padding)
    if layer.kind == "norm":
        return nn.GroupNorm(layer.groups, layer.cout)
    if layer.kind == "relu":
        return nn.ReLU(inplace=True)
    if layer.kind == "pool":
        return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
    if layer.kind == "lrn":
        return nn.LocalResponseNorm(layer.kernel)
    if layer.kind == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown layer kind {layer.kind!r}")


class Encoder(nn.Module):
    """A stack of layers whose output is flattened to one code per input."""

    def __init__(self, layers: list[Layer]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[_module(layer) for layer in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)


class SCLVINet(nn.Module):
    """One main encoder shared by both scales (Fig. 1), plus the secondary encoder for 64-px patches."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.embed_dim = cfg.embed_dim
        self.main = Encoder(main_layers(cfg))  # (N, 3, 32, 32) -> (N, D)
        self.secondary = Encoder(secondary_layers(cfg))  # (N, D, 2, 2) -> (N, D)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.embed(patches)

    def embed_small(self, patches: torch.Tensor) -> torch.Tensor:
        return self.main(patches)

    def quarter_grid(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, 3, 64, 64) -> (N, D, 2, 2): main-encoder codes of the four 32-px quarters."""
        n, c, s, _ = patches.shape
        h = s // 2
        quarters = patches.reshape(n, c, 2, h, 2, h).permute(0, 2, 4, 1, 3, 5).reshape(n * 4, c, h, h)
        return self.main(quarters).reshape(n, 2, 2, self.embed_dim).permute(0, 3, 1, 2)

    def embed_large(self, patches: torch.Tensor) -> torch.Tensor:
        return self.secondary(self.quarter_grid(patches))

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """Embed 32-px or 64-px patches, chosen by their size."""
        size = patches.shape[-1]
        if size == 32:
            return self.embed_small(patches)
        if size == 64:
            return self.embed_large(patches)
        raise ValueError(f"patches must be 32 or 64 px, got {size}")


def build_model(cfg: EncoderConfig) -> SCLVINet:
    return SCLVINet(cfg)


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
