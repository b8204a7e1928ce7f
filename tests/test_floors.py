"""The no-learning floor: exact patch features, and it finds what a plain pixel difference can find."""

import numpy as np
import pytest

from sclvi.floors import CELL, raw_pixel_codes, raw_pixel_floor
from sclvi.config import build_config
from sclvi.dataset import read_dataset
from sclvi.synthetic import write_synthetic


def test_raw_pixel_codes_are_each_patch_block_averaged_to_8x8():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, (96, 96, 3)).astype(np.float32)
    codes = raw_pixel_codes(frame, mean, patch=32, stride=8)
    assert codes.shape == (9, 9, 3 * CELL * CELL)
    f = (frame.astype(np.float32) - mean) / 255.0
    for i, j in ((0, 0), (3, 5), (8, 8)):
        p = f[8 * i : 8 * i + 32, 8 * j : 8 * j + 32]
        expected = p.reshape(CELL, 4, CELL, 4, 3).mean(axis=(1, 3)).transpose(2, 0, 1).ravel()
        np.testing.assert_allclose(codes[i, j], expected, rtol=1e-5, atol=1e-6)


def test_raw_pixel_floor_scores_defects_above_good_parts(tmp_path):
    root = write_synthetic(tmp_path, "object", size=128, n_train=6, n_test_good=4, n_test_defect=2, seed=0)
    ds = read_dataset(root)
    cfg = build_config("lite", {"geometry": {"image_size": 128, "small_stride": 8, "large_stride": 16}})
    scores, maps, _ = raw_pixel_floor(cfg, ds, ds.train)
    labels = np.array([t.is_anomalous for t in ds.test])
    assert maps.shape == (len(ds.test), 128, 128) and np.isfinite(maps).all()
    assert scores[labels].mean() > 2 * scores[~labels].mean()
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(axis=1))


def test_sclvi_eval_floor_scores_the_raw_pixel_floor_on_the_same_parts(tmp_path, synthetic_object):
    """`sclvi eval --floor`: the floor's figures are those of raw_pixel_floor on the same test parts and bank
    images, 'learning adds' is the model's image AUROC minus the floor's, and both show on the terminal."""
    import json

    from typer.testing import CliRunner

    from conftest import make_bundle, tiny_config
    from sclvi.cli import app
    from sclvi.metrics import auroc

    ds = read_dataset(synthetic_object)
    cfg = tiny_config(96)
    bundle = make_bundle(tmp_path / "b", cfg, ds.train)
    result = CliRunner().invoke(app, ["eval", str(bundle.path), str(synthetic_object), "--out", str(tmp_path / "r"),
                                      "--overlays", "0", "--backend", "torch", "--floor"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    scores, _, _ = raw_pixel_floor(cfg, ds, ds.train)
    labels = np.array([t.is_anomalous for t in ds.test])
    assert report["floor"]["image_auroc"] == pytest.approx(auroc(labels, scores))
    assert set(report["floor"]["per_defect"]) == set(report["per_defect"])
    assert report["learning_adds_image_auroc"] == pytest.approx(report["image_auroc"] - report["floor"]["image_auroc"])
    assert "raw-pixel floor" in result.output and "learning adds" in result.output

    # without --floor nothing of it is computed or shown
    result = CliRunner().invoke(app, ["eval", str(bundle.path), str(synthetic_object), "--out", str(tmp_path / "r2"),
                                      "--overlays", "0", "--backend", "torch"])
    assert result.exit_code == 0 and "raw-pixel floor" not in result.output
    assert "floor" not in json.loads((tmp_path / "r2" / "metrics.json").read_text())


def test_eval_floor_says_why_when_the_geometry_has_none(tmp_path, synthetic_object):
    """A 2-px stride, which does not fall on the floor's 4-px blocks: the evaluation still runs and says why there is no
    floor instead of failing or showing a wrong one."""
    from conftest import make_bundle, tiny_config
    from sclvi.engines import load_backend
    from sclvi.evaluate import evaluate

    ds = read_dataset(synthetic_object)
    bundle = make_bundle(tmp_path / "b", tiny_config(96, geometry={"small_stride": 2}), ds.train)
    report = evaluate(bundle, ds, load_backend(bundle, "torch"), tmp_path / "r", n_overlays=0, floor=True)
    assert "do not fall on" in report["floor"]["unavailable"] and "learning_adds_image_auroc" not in report
