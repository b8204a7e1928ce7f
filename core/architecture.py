"""The encoders' layer lists as plain data (no torch): what the torch model is built from, what a
weight file must contain, and how many multiply-accumulates a patch costs.

Main encoder, paper Table 5 (32x32x3 -> 1x1xD); secondary encoder, Table 6 (2x2xD -> 1x1xD).
Extras from the authors' code: ReLU, LocalResponseNorm(5) after the first two max-pools, no activation
after conv6, tanh on the output. GroupNorm follows every conv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sclvi.config import EncoderConfig


@dataclass(frozen=True)
class Layer:
    kind: str  # conv | norm | bn | pnorm | relu | pool | lrn | tanh
    cin: int = 0
    cout: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    groups: int = 0  # GroupNorm groups


_NORM_KIND = {"group": "norm", "batch": "bn", "position": "pnorm"}


def _conv_block(cin: int, cout: int, kernel: int, padding: int, groups: int, norm: str = "group") -> list[Layer]:
    return [Layer("conv", cin, cout, kernel, 1, padding), Layer(_NORM_KIND[norm], cout, cout, groups=math.gcd(groups, cout))]


def main_layers(cfg: EncoderConfig) -> list[Layer]:
    return dense_main_layers(cfg) if cfg.family == "dense" else paper_main_layers(cfg)


def dense_main_layers(cfg: EncoderConfig) -> list[Layer]:
    """No padding, two 2x2 pools (total stride 4), receptive field exactly 32: 32-28-14-10-5-3-1-1-1-1."""
    c1, c2, c3, c4, c5, c6 = cfg.conv_widths
    g, n = cfg.groups, cfg.norm
    relu, lrn = Layer("relu"), Layer("lrn", kernel=5)
    return [
        *_conv_block(3, c1, 5, 0, g, n), relu, Layer("pool", kernel=2, stride=2), lrn,  # 28 -> 14
        *_conv_block(c1, c2, 5, 0, g, n), relu, Layer("pool", kernel=2, stride=2), lrn,  # 10 -> 5
        *_conv_block(c2, c3, 3, 0, g, n), relu,  # 3
        *_conv_block(c3, c4, 3, 0, g, n), relu,  # 1
        *_conv_block(c4, c5, 1, 0, g, n), relu,  # pointwise, Table 5's conv5 width
        *_conv_block(c5, c6, 1, 0, g, n),  # conv6: no activation
        *_conv_block(c6, cfg.embed_dim, 1, 0, g, n), Layer("tanh"),
    ]


def paper_main_layers(cfg: EncoderConfig) -> list[Layer]:
    c1, c2, c3, c4, c5, c6 = cfg.conv_widths
    g = cfg.groups
    relu, lrn = Layer("relu"), Layer("lrn", kernel=5)
    return [
        *_conv_block(3, c1, 5, 0, g), relu,  # conv1 28x28
        Layer("pool", kernel=3, stride=2, padding=1), lrn,  # maxpool1 14x14
        *_conv_block(c1, c2, 5, 2, g), relu,  # conv2 14x14
        Layer("pool", kernel=3, stride=2, padding=0), lrn,  # maxpool2 6x6
        *_conv_block(c2, c3, 3, 1, g), relu,  # conv3 6x6
        *_conv_block(c3, c4, 3, 1, g), relu,  # conv4 6x6
        *_conv_block(c4, c5, 3, 1, g), relu,  # conv5 6x6
        Layer("pool", kernel=3, stride=2, padding=1),  # maxpool3 3x3
        *_conv_block(c5, c6, 2, 0, g),  # conv6 2x2, no activation
        *_conv_block(c6, cfg.embed_dim, 2, 0, g), Layer("tanh"),  # conv7 1x1
    ]


def secondary_layers(cfg: EncoderConfig) -> list[Layer]:
    """Table 6. Its GroupNorm sees a 1x1 map, i.e. it is per-position: the dense family keeps it as such."""
    g = cfg.groups
    n = "position" if cfg.family == "dense" else "group"
    return [
        *_conv_block(cfg.embed_dim, cfg.secondary_width, 2, 0, g, n), Layer("relu"),  # conv1 1x1
        *_conv_block(cfg.secondary_width, cfg.embed_dim, 1, 0, g, n), Layer("tanh"),  # conv2 1x1
    ]


def output_sizes(layers: list[Layer], size: int) -> list[int]:
    """Spatial size after each layer, for an input of side `size`."""
    out = []
    for layer in layers:
        if layer.kind in ("conv", "pool"):
            size = (size + 2 * layer.padding - layer.kernel) // layer.stride + 1
        out.append(size)
    return out


def macs(layers: list[Layer], size: int) -> int:
    """Multiply-accumulates of the convolutions for one input of side `size`."""
    total = 0
    for layer, s in zip(layers, output_sizes(layers, size)):
        if layer.kind == "conv":
            total += s * s * layer.cout * layer.cin * layer.kernel * layer.kernel
    return total


def expected_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of SCLVINet for this config (what a weight file must hold)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for prefix, layers in (("main.layers", main_layers(cfg)), ("secondary.layers", secondary_layers(cfg))):
        for i, layer in enumerate(layers):
            if layer.kind == "conv":
                shapes[f"{prefix}.{i}.weight"] = (layer.cout, layer.cin, layer.kernel, layer.kernel)
                shapes[f"{prefix}.{i}.bias"] = (layer.cout,)
            elif layer.kind in ("norm", "pnorm", "bn"):
                shapes[f"{prefix}.{i}.weight"] = (layer.cout,)
                shapes[f"{prefix}.{i}.bias"] = (layer.cout,)
                if layer.kind == "bn":
                    shapes[f"{prefix}.{i}.running_mean"] = (layer.cout,)
                    shapes[f"{prefix}.{i}.running_var"] = (layer.cout,)
                    shapes[f"{prefix}.{i}.num_batches_tracked"] = ()
    return shapes
