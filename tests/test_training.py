"""Training: resumable checkpoints that continue exactly, and the ablation tasks as options."""

import numpy as np
import pytest
import torch

from conftest import tiny_config
from sclvi.bundle import load_bundle
from sclvi.errors import ConfigError, DataError
from sclvi.synthetic import write_synthetic
from sclvi.train.trainer import CHECKPOINT, train


@pytest.fixture(scope="module")
def data176(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("d"), "texture", size=176, n_train=4, n_test_good=1, n_test_defect=1)


def _cfg(steps, task="scl12"):
    return tiny_config(176, train={"steps": steps, "batch_size": 4, "checkpoint_every": 2, "task": task, "threads": 1})


def test_resume_continues_exactly_where_it_stopped(tmp_path, data176):
    straight = train(_cfg(6), data176, tmp_path / "straight")
    train(_cfg(4), data176, tmp_path / "resumed")
    resumed = train(_cfg(6), data176, tmp_path / "resumed", resume=True)
    assert resumed.manifest["training"]["steps"] == 6
    for k, v in straight.weights.items():
        np.testing.assert_array_equal(resumed.weights[k], v, err_msg=k)
    assert not np.array_equal(load_bundle(tmp_path / "straight").mean, 0)


def test_resume_refuses_a_different_config(tmp_path, data176):
    train(_cfg(2), data176, tmp_path / "b")
    other = tiny_config(176, train={"steps": 4, "batch_size": 4, "lr": 1e-2, "threads": 1})
    with pytest.raises(ConfigError, match="different config"):
        train(other, data176, tmp_path / "b", resume=True)
    with pytest.raises(DataError, match="nothing to resume"):
        train(_cfg(2), data176, tmp_path / "fresh", resume=True)


@pytest.mark.parametrize("task, n_classes", [("jigsaw8", 8), ("none", 0)])
def test_ablation_tasks(tmp_path, data176, task, n_classes):
    bundle = train(_cfg(2, task), data176, tmp_path / task)
    ckpt = torch.load(bundle.path / CHECKPOINT, weights_only=False)
    heads = {k: v.shape for k, v in ckpt["heads"].items() if k.endswith("net.4.weight")}
    assert heads == ({"32.net.4.weight": (n_classes, 128), "64.net.4.weight": (n_classes, 128)} if n_classes else {})
    assert bundle.manifest["config"]["train"]["task"] == task


def test_images_too_small_for_the_large_grid_are_refused(tmp_path, data176):
    cfg = tiny_config(128, train={"steps": 1, "batch_size": 2})
    with pytest.raises(ValueError, match="raise geometry.image_size"):
        train(cfg, data176, tmp_path / "b")
