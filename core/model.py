"""The SCL-VI encoders in torch, built from the layer lists of `sclvi.architecture`.

Only training and the torch reference backend import this module; the runtime does not need torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sclvi.architecture import Layer, main_layers, secondary_layers
from sclvi.config import EncoderConfig


class PositionGroupNorm(nn.Module):
    """GroupNorm whose statistics are taken over channel groups at each pixel separately.

    On a 1x1 map it equals nn.GroupNorm (same parameter names), and unlike GroupNorm it gives the same
    result for a patch whether that patch is evaluated alone or as part of a whole frame.
    """

    def __init__(self, groups: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = x.reshape(n, self.groups, c // self.groups, h, w)
        mean = g.mean(dim=2, keepdim=True)
        var = (g - mean).pow(2).mean(dim=2, keepdim=True)
        y = ((g - mean) / torch.sqrt(var + self.eps)).reshape(n, c, h, w)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def _module(layer: Layer) -> nn.Module:
    if layer.kind == "conv":
        return nn.Conv2d(layer.cin, layer.cout, layer.kernel, layer.stride, layer.padding)
    if layer.kind == "norm":
        return nn.GroupNorm(layer.groups, layer.cout)
    if layer.kind == "pnorm":
        return PositionGroupNorm(layer.groups, layer.cout)
    if layer.kind == "bn":
        return nn.BatchNorm2d(layer.cout)
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


def fold_batchnorm(layers: nn.Sequential) -> nn.Sequential:
    """A copy for inference with every BatchNorm folded into the conv before it (exact in eval mode)."""
    out: list[nn.Module] = []
    for m in layers:
        if isinstance(m, nn.BatchNorm2d) and out and isinstance(out[-1], nn.Conv2d):
            conv = out[-1]
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
            with torch.no_grad():
                folded.weight.copy_(conv.weight * scale[:, None, None, None])
                folded.bias.copy_((conv.bias - m.running_mean) * scale + m.bias)
            out[-1] = folded
        else:
            out.append(m)
    return nn.Sequential(*out)


class DenseFrameEncoder(nn.Module):
    """Both scales of a whole frame in one fully convolutional pass (dense family only).

    frame (B, 3, S, S) -> small codes (B, D, n, n) at the configured small stride, and large codes
    (B, D, m, m): the secondary encoder as a 2x2 convolution dilated by 32/4 = 8 grid cells (the quarter
    offset) and strided by large_stride/4, over the stride-4 grid of small codes.
    Border rule: patch (i, j) sits at pixel (4i, 4j); n = floor((S - 32) / 4) + 1, so pixels past the last
    whole patch are left out (the geometry config refuses sizes that would leave any).
    """

    def __init__(self, net: SCLVINet, small_stride: int, large_stride: int) -> None:
        super().__init__()
        if small_stride % 4 or large_stride % 4:
            raise ValueError("the dense family runs at stride 4: small and large strides must be multiples of 4")
        self.main = fold_batchnorm(net.main.layers).eval()
        sec = list(net.secondary.layers)
        first = sec[0]
        self.large_conv = nn.Conv2d(first.in_channels, first.out_channels, 2, stride=large_stride // 4, dilation=8)
        with torch.no_grad():
            self.large_conv.weight.copy_(first.weight)
            self.large_conv.bias.copy_(first.bias)
        self.large_rest = nn.Sequential(*sec[1:])
        self.sub = small_stride // 4

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid4 = self.main(frame)
        small = grid4[:, :, :: self.sub, :: self.sub] if self.sub > 1 else grid4
        large = self.large_rest(self.large_conv(grid4))
        return small, large


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
