"""The dense encoder family: one fully convolutional pass gives exactly the per-patch codes."""

import numpy as np
import pytest
import torch

from conftest import make_bundle
from sclvi.architecture import dense_main_layers, output_sizes
from sclvi.config import build_config
from sclvi.errors import ConfigError
from sclvi.model import DenseFrameEncoder, build_model

TINY_DENSE = {"family": "dense", "norm": "batch", "conv_widths": (8, 16, 16, 16, 16, 16),
              "secondary_width": 16, "embed_dim": 16, "groups": 4}


def _random_dense(norm: str = "batch", seed: int = 0):
    cfg = build_config("dense-lite", {"encoder": {**TINY_DENSE, "norm": norm}})
    torch.manual_seed(seed)
    model = build_model(cfg.encoder)
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding is really tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return cfg, model.eval()


def test_dense_layers_reduce_a_32px_patch_to_one_code_at_stride_4():
    cfg = build_config("dense")
    sizes = output_sizes(dense_main_layers(cfg.encoder), 32)
    assert sizes[-1] == 1 and 28 in sizes and 14 in sizes and 5 in sizes
    pools = [layer for layer in dense_main_layers(cfg.encoder) if layer.kind == "pool"]
    assert np.prod([p.stride for p in pools]) == 4
    assert all(layer.padding == 0 for layer in dense_main_layers(cfg.encoder))


@pytest.mark.parametrize("norm", ["batch", "position"])
@pytest.mark.parametrize("size, small_stride", [(256, 4), (101, 4), (120, 8), (64, 4)])
def test_dense_pass_equals_per_patch_evaluation(norm, size, small_stride):
    cfg, model = _random_dense(norm)
    dense = DenseFrameEncoder(model, small_stride, 16).eval()
    x = torch.randn(2, 3, size, size) * 0.5
    with torch.no_grad():
        small, large = dense(x)
        n, m = small.shape[-1], large.shape[-1]
        # border rule: patch (i, j) at pixel (stride*i, stride*j), only whole patches
        assert n == (size - 32) // small_stride + 1 and m == (size - 64) // 16 + 1
        patches = torch.stack([x[:, :, small_stride * i : small_stride * i + 32, small_stride * j : small_stride * j + 32]
                               for i in range(n) for j in range(n)], 1).reshape(-1, 3, 32, 32)
        ref_small = model.embed_small(patches).reshape(2, n, n, -1)
        big = torch.stack([x[:, :, 16 * i : 16 * i + 64, 16 * j : 16 * j + 64] for i in range(m) for j in range(m)], 1)
        ref_large = model.embed_large(big.reshape(-1, 3, 64, 64)).reshape(2, m, m, -1)
    assert (small.permute(0, 2, 3, 1) - ref_small).abs().max() < 1e-4
    assert (large.permute(0, 2, 3, 1) - ref_large).abs().max() < 1e-4


def test_receptive_field_is_exactly_the_patch():
    cfg, model = _random_dense()
    dense = DenseFrameEncoder(model, 4, 16).eval()
    x = torch.randn(1, 3, 72, 72)
    y = x.clone()
    y[:, :, 32:, 32:] += 5.0  # just outside patch (0, 0) = pixels 0..31, inside patch (1, 1) = pixels 4..35
    with torch.no_grad():
        a, _ = dense(x)
        b, _ = dense(y)
    assert torch.equal(a[..., 0, 0], b[..., 0, 0]) and not torch.equal(a[..., 1, 1], b[..., 1, 1])


def test_scorer_uses_one_dense_call_and_matches_per_patch_path(tmp_path):
    from sclvi.embedding import FrameEmbedder
    from sclvi.engines.torch_backend import TorchBackend
    from sclvi.geometry import TwoScaleGeometry

    cfg = build_config("dense-lite", {"encoder": TINY_DENSE, "geometry": {"image_size": 96}})
    bundle = make_bundle(tmp_path / "b", cfg)
    backend = TorchBackend(bundle)
    calls = []
    dense_fn = backend.encode_frames
    backend.encode_frames = lambda f: calls.append(f.shape) or dense_fn(f)
    geometry = TwoScaleGeometry.from_config(cfg.geometry)
    frames = np.random.default_rng(0).normal(scale=0.5, size=(2, 3, 96, 96)).astype(np.float32)
    dense = FrameEmbedder(backend, geometry).embed(frames)
    assert calls == [(2, 3, 96, 96)]  # one call for the whole batch, both scales
    del backend.encode_frames  # fall back to the per-patch path on the same weights
    per_patch = FrameEmbedder(backend, geometry).embed(frames)
    np.testing.assert_allclose(dense.small, per_patch.small, atol=1e-4)
    np.testing.assert_allclose(dense.large, per_patch.large, atol=1e-4)


def test_dense_config_rules():
    with pytest.raises(ConfigError, match="per-position norm"):
        build_config("dense", {"encoder": {"norm": "group"}})
    with pytest.raises(ConfigError, match="multiples of 4"):
        build_config("dense", {"geometry": {"small_stride": 2}})
    with pytest.raises(ConfigError, match="GroupNorm"):
        build_config("paper", {"encoder": {"norm": "batch"}})


@pytest.fixture(scope="module")
def dense_onnx(tmp_path_factory):
    """A tiny dense bundle exported to ONNX (frame graph and per-patch graphs), loaded back, and its export record."""
    from sclvi.bundle import load_bundle
    from sclvi.engines.export import export_onnx

    cfg = build_config("dense-lite", {"encoder": TINY_DENSE, "geometry": {"image_size": 96}})
    bundle = make_bundle(tmp_path_factory.mktemp("dense") / "b", cfg)
    record = export_onnx(bundle)
    return load_bundle(bundle.path), record


def test_dense_frame_graph_exported_to_onnx_matches_torch(dense_onnx):
    from sclvi.engines import load_backend

    bundle, record = dense_onnx
    assert record["checks"]["frame_fp32_max_abs_diff"] < 1e-4
    ort_backend, torch_backend = load_backend(bundle, "onnxruntime"), load_backend(bundle, "torch")
    frames = np.random.default_rng(0).normal(scale=0.5, size=(3, 3, 96, 96)).astype(np.float32)
    for a, b in zip(ort_backend.encode_frames(frames), torch_backend.encode_frames(frames)):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4


def test_dense_bundle_per_patch_onnx_graphs_give_the_frame_codes(dense_onnx):
    """TensorRT builds its engines from the per-patch graphs (main.onnx, secondary.onnx) for every family, so a
    dense bundle on a GPU is encoded patch by patch: those graphs must give the one-pass frame graph's codes."""
    from sclvi.embedding import FrameEmbedder
    from sclvi.engines import load_backend
    from sclvi.geometry import TwoScaleGeometry

    bundle, _ = dense_onnx
    backend = load_backend(bundle, "onnxruntime")
    geometry = TwoScaleGeometry.from_config(bundle.config.geometry)
    frames = np.random.default_rng(1).normal(scale=0.5, size=(2, 3, 96, 96)).astype(np.float32)
    one_pass = FrameEmbedder(backend, geometry).embed(frames)
    del backend.encode_frames  # the per-patch graphs only, as the TensorRT engines run them
    embedder = FrameEmbedder(backend, geometry)
    assert not embedder.dense
    per_patch = embedder.embed(frames)
    assert per_patch.small.shape == one_pass.small.shape and per_patch.large.shape == one_pass.large.shape
    np.testing.assert_allclose(per_patch.small, one_pass.small, atol=1e-4)
    np.testing.assert_allclose(per_patch.large, one_pass.large, atol=1e-4)
