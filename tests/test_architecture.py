"""The encoders match the paper's Tables 5 and 6 layer by layer."""

import pytest
import torch
from torch import nn

from sclvi.architecture import expected_shapes, macs, main_layers, output_sizes
from sclvi.config import build_config
from sclvi.model import build_model

# Table 5: (layer, output H=W, channels) for the conv and pool layers, in order.
TABLE5 = [
    ("conv1", 28, 96), ("maxpool1", 14, 96), ("conv2", 14, 256), ("maxpool2", 6, 256),
    ("conv3", 6, 384), ("conv4", 6, 384), ("conv5", 6, 256), ("maxpool3", 3, 256),
    ("conv6", 2, 128), ("conv7", 1, 64),
]


def _shapes_after(module: nn.Sequential, x: torch.Tensor, kinds: tuple[type, ...]) -> list[tuple[int, int]]:
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((o.shape[-1], o.shape[1]))) for m in module if isinstance(m, kinds)]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return seen


def test_main_encoder_matches_table5_layer_by_layer():
    model = build_model(build_config("paper").encoder)
    got = _shapes_after(model.main.layers, torch.randn(2, 3, 32, 32), (nn.Conv2d, nn.MaxPool2d))
    assert got == [(size, ch) for _, size, ch in TABLE5]


def test_secondary_encoder_matches_table6():
    model = build_model(build_config("paper").encoder)
    got = _shapes_after(model.secondary.layers, torch.randn(2, 64, 2, 2), (nn.Conv2d,))
    assert got == [(1, 128), (1, 64)]
    convs = [m for m in model.secondary.layers if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(2, 2), (1, 1)]


def test_groupnorm_after_every_conv_and_authors_extras():
    model = build_model(build_config("paper").encoder)
    layers = list(model.main.layers)
    for i, m in enumerate(layers):
        if isinstance(m, nn.Conv2d):
            assert isinstance(layers[i + 1], nn.GroupNorm)
    pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    lrns = [i for i, m in enumerate(layers) if isinstance(m, nn.LocalResponseNorm)]
    assert lrns == [pools[0] + 1, pools[1] + 1]  # LRN after the first two pools only
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    assert not isinstance(layers[convs[5] + 2], nn.ReLU)  # conv6: GroupNorm, then straight to conv7
    assert isinstance(layers[-1], nn.Tanh)
    assert sum(isinstance(m, nn.ReLU) for m in layers) == 5


def test_torch_free_description_agrees_with_the_model():
    for preset in ("paper", "lite"):
        cfg = build_config(preset).encoder
        model = build_model(cfg)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_shapes(cfg)
    spatial = [s for layer, s in zip(main_layers(cfg), output_sizes(main_layers(cfg), 32)) if layer.kind in ("conv", "pool")]
    assert spatial == [size for _, size, _ in TABLE5]


def test_paper_preset_costs_238M_macs_per_patch_and_lite_is_much_cheaper():
    paper = macs(main_layers(build_config("paper").encoder), 32)
    lite = macs(main_layers(build_config("lite").encoder), 32)
    assert paper == pytest.approx(238.1e6, rel=1e-3)
    assert lite < paper / 10


def test_one_main_encoder_serves_both_scales():
    model = build_model(build_config("lite").encoder).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        grid = model.quarter_grid(x)
        tl = model.embed_small(x[:, :, :32, :32])
        br = model.embed_small(x[:, :, 32:, 32:])
        tr = model.embed_small(x[:, :, :32, 32:])
    torch.testing.assert_close(grid[:, :, 0, 0], tl)
    torch.testing.assert_close(grid[:, :, 1, 1], br)
    torch.testing.assert_close(grid[:, :, 0, 1], tr)
    assert model.embed(x).shape == (3, 64)
