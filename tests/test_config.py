"""Configs: presets, YAML files, and clear errors for bad keys and inconsistent geometry."""

import pytest

from sclvi.config import build_config, load_config
from sclvi.errors import ConfigError


def test_presets_differ_only_where_intended():
    paper, lite = build_config("paper"), build_config("lite")
    assert paper.encoder.conv_widths == (96, 256, 384, 384, 256, 128)
    assert lite.encoder.conv_widths != paper.encoder.conv_widths
    assert lite.geometry == paper.geometry and lite.scoring == paper.scoring
    assert (paper.scoring.eta, paper.scoring.lam, paper.train.alpha) == (10, 20.0, 1e-4)


def test_yaml_file_overrides_preset(tmp_path):
    f = tmp_path / "line3.yaml"
    f.write_text("preset: lite\ntrain:\n  steps: 7\nscoring:\n  eta: 3\n")
    cfg = load_config(f)
    assert cfg.preset == "lite" and cfg.train.steps == 7 and cfg.scoring.eta == 3
    assert load_config(f, overrides={"train": {"steps": 9}}).train.steps == 9


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("train:\n  stpes: 10\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.stpes'"):
        load_config(f)


@pytest.mark.parametrize(
    "text, message",
    [
        ("geometry:\n  image_size: 250\n", "multiple of"),
        ("geometry:\n  small_stride: 3\n", "must divide"),
        ("scoring:\n  eta: 0\n", "scoring.eta"),
        ("- a list\n", "mapping"),
        ("train: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_values_are_refused(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(f)


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("huge")


def test_paper_preset_stays_as_published_and_product_presets_carry_the_improvements():
    from sclvi.config import PRESETS, build_config

    paper = build_config("paper")
    assert paper.preprocess.photometric == "none" and paper.train.defect_weight == 0.0 and paper.bank.neighbourhood == 1
    assert paper.preprocess.mean == "image" and paper.bank.retrieve == 0
    for preset in set(PRESETS) - {"paper"}:
        cfg = build_config(preset)
        assert cfg.preprocess.photometric == "frame" and cfg.train.defect_weight > 0 and cfg.bank.neighbourhood == 3, preset
        assert cfg.preprocess.mean == "flat" and cfg.bank.retrieve == 50, preset
    # a user can still switch each one off
    off = build_config("dense-lite", {"preprocess": {"photometric": "none"}, "train": {"defect_weight": 0}})
    assert off.preprocess.photometric == "none" and off.train.defect_weight == 0
