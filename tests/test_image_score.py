"""The image score over one patch's worth of the map's highest pixels (`scoring.image_score: top-patch`, an
option; every preset keeps the paper's max): what it computes, the case it is for, that the scorer and the
raw-pixel floor both follow the setting, and that a bundle from before the setting keeps the max its calibrated
thresholds were set on."""

import json

import numpy as np
import pytest

from conftest import make_bundle, tiny_config
from sclvi.bundle import load_bundle
from sclvi.config import build_config
from sclvi.dataset import read_dataset
from sclvi.maps import image_score, top_pixels
from sclvi.roi import read_input
from sclvi.scorer import AnomalyScorer


def test_the_score_is_the_mean_of_the_top_pixels_and_top_one_is_the_max():
    m = np.random.default_rng(0).random((64, 48)).astype(np.float32)
    assert image_score(m) == image_score(m, 1) == float(m.max())
    assert image_score(m, 100) == pytest.approx(np.sort(m.ravel())[-100:].mean(), rel=1e-6)
    assert image_score(m, m.size) == image_score(m, 10 * m.size) == pytest.approx(m.mean(), rel=1e-6)
    assert top_pixels("max", 32) == 1 and top_pixels("top-patch", 32) == 1024
    with pytest.raises(ValueError, match="max or top-patch"):
        top_pixels("median", 32)


def test_a_part_off_over_a_wide_area_outranks_a_narrow_bump_only_with_top_patch():
    top = top_pixels("top-patch", 32)
    bump = np.ones((256, 256), np.float32)
    bump[100:112, 100:112] = 2.0  # one narrow bump on a good part (smaller than a patch: the map's noise)
    wide = np.ones((256, 256), np.float32)
    wide[:, :64] = 1.6  # a band of the part off all along it, as a region of another finish is
    assert image_score(bump) > image_score(wide)  # the paper's max ranks the good part's bump first
    assert image_score(wide, top) > image_score(bump, top)


def test_the_scorer_follows_the_setting_and_old_bundles_keep_the_max(tmp_path, synthetic_object):
    assert build_config("dense-lite").scoring.image_score == build_config("paper").scoring.image_score == "max"
    ds = read_dataset(synthetic_object)
    bundle = make_bundle(tmp_path / "b", tiny_config(96, scoring={"image_score": "top-patch"}), ds.train)
    frame = read_input(ds.test[-1].path, bundle.config.geometry)
    got = AnomalyScorer(bundle, _backend(bundle)).score([frame])[0]
    assert got.score == pytest.approx(image_score(got.anomaly_map, 32 * 32), rel=1e-6) and got.score < got.anomaly_map.max()
    # a bundle written before the setting existed (no `image_score` in its config) is scored as it was calibrated
    manifest = json.loads((bundle.path / "bundle.json").read_text())
    del manifest["config"]["scoring"]["image_score"]
    (bundle.path / "bundle.json").write_text(json.dumps(manifest))
    old = load_bundle(bundle.path)
    assert old.config.scoring.image_score == "max"
    assert AnomalyScorer(old, _backend(old)).score([frame])[0].score == pytest.approx(float(got.anomaly_map.max()), rel=1e-6)


def test_the_raw_pixel_floor_takes_the_same_image_score(tmp_path, synthetic_object):
    from sclvi.floors import raw_pixel_floor

    ds = read_dataset(synthetic_object)
    for kind, top in (("top-patch", 1024), ("max", 1)):
        cfg = tiny_config(96, scoring={"image_score": kind})
        scores, maps, _ = raw_pixel_floor(cfg, ds, ds.train)
        np.testing.assert_allclose(scores, [image_score(m, top) for m in maps], rtol=1e-6)
    assert not np.allclose(scores, [image_score(m, 1024) for m in maps])  # the two settings differ on these maps


def test_sclvi_eval_scores_a_bundle_either_way(tmp_path, synthetic_object):
    from typer.testing import CliRunner

    from sclvi.cli import app

    bundle = make_bundle(tmp_path / "b", tiny_config(96), read_dataset(synthetic_object).train)
    scores = {}
    for kind in ("max", "top-patch"):
        out = tmp_path / kind
        result = CliRunner().invoke(app, ["eval", str(bundle.path), str(synthetic_object), "--out", str(out),
                                          "--image-score", kind, "--overlays", "0", "--backend", "torch"])
        assert result.exit_code == 0, result.output
        report = json.loads((out / "metrics.json").read_text())
        assert report["scoring"]["image_score"] == kind
        scores[kind] = np.array([r["score"] for r in report["image_scores"]])
    assert (scores["top-patch"] < scores["max"]).all()  # the mean of a patch's worth of top pixels, below the peak


def _backend(bundle):
    from sclvi.engines import load_backend

    return load_backend(bundle, "torch")
