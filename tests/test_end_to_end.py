"""A short CPU training on synthetic data, through the CLI, detects the planted defects."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from sclvi.cli import app
from sclvi.synthetic import write_synthetic


@pytest.mark.slow
def test_train_then_eval_reaches_auroc_0_9(tmp_path):
    data = write_synthetic(tmp_path / "data", "object", size=192, n_train=16, n_test_good=8, n_test_defect=4, seed=3)
    cfg = tmp_path / "line.yaml"
    cfg.write_text(yaml.safe_dump({
        "preset": "lite",
        "geometry": {"image_size": 192, "small_stride": 8},
        "train": {"steps": 40, "batch_size": 16, "lr": 1e-3},
    }))
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "bundle"), "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert manifest["training"]["steps"] == 40 and set(manifest["banks"]) == {"small", "large"}

    result = runner.invoke(app, ["eval", str(tmp_path / "bundle"), str(data), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "image AUROC" in result.output
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["image_auroc"] >= 0.9
    assert report["pixel_auroc"] >= 0.9
    assert set(report["per_defect"]) == {"hole", "missing", "scratch", "spot"}
    assert len(report["image_scores"]) == 24
    assert (tmp_path / "report" / "roc.png").stat().st_size > 1000
    assert len(list((tmp_path / "report" / "overlays").glob("*.png"))) == 6
