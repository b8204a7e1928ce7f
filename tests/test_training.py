"""Training: resumable checkpoints that continue exactly, and the ablation tasks as options."""

import numpy as np
import pytest
import torch

from conftest import tiny_config
from sclvi.bundle import load_bundle
from sclvi.errors import ConfigError, DataError
from sclvi.synthetic import write_synthetic
from sclvi.train.trainer import CHECKPOINT, resumable, train


@pytest.fixture(scope="module")
def data176(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("d"), "texture", size=176, n_train=4, n_test_good=1, n_test_defect=1)


def _cfg(steps, task="scl12", schedule="constant"):
    return tiny_config(176, train={"steps": steps, "batch_size": 4, "checkpoint_every": 2, "task": task, "threads": 1,
                                   "schedule": schedule})


def test_resume_continues_exactly_where_it_stopped(tmp_path, data176):
    # constant schedule: a cosine schedule is stretched over the new step budget, by design
    straight = train(_cfg(6), data176, tmp_path / "straight")
    train(_cfg(4), data176, tmp_path / "resumed")
    first_s = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["seconds"]
    resumed = train(_cfg(6), data176, tmp_path / "resumed", resume=True)
    training = resumed.manifest["training"]
    assert training["steps"] == 6
    assert first_s > 0 and training["seconds"] == pytest.approx(first_s + training["seconds_this_run"], abs=0.11)
    for k, v in straight.weights.items():
        np.testing.assert_array_equal(resumed.weights[k], v, err_msg=k)
    assert not np.array_equal(load_bundle(tmp_path / "straight").mean, 0)


def test_a_cosine_schedule_checkpoint_loads_safely(tmp_path, data176):
    """The default schedule set the optimizer's lr to a numpy scalar, which a weights_only load refuses: every
    real training's checkpoint was unreadable, so `--resume` and the benchmark's resume started from scratch."""
    cfg = _cfg(2, schedule="cosine")
    train(cfg, data176, tmp_path / "b")
    ckpt = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 2 and type(ckpt["optimizer"]["param_groups"][0]["lr"]) is float
    assert resumable(tmp_path / "b", cfg)


def test_resume_refuses_a_different_config(tmp_path, data176, caplog):
    train(_cfg(2), data176, tmp_path / "b")
    other = tiny_config(176, train={"steps": 4, "batch_size": 4, "lr": 1e-2, "threads": 1})
    with pytest.raises(ConfigError, match="different config"):
        train(other, data176, tmp_path / "b", resume=True)
    assert resumable(tmp_path / "b", _cfg(4))
    with caplog.at_level("WARNING"):
        assert not resumable(tmp_path / "b", other)
    assert "another config" in caplog.text
    assert not resumable(tmp_path / "fresh", _cfg(2))
    with pytest.raises(DataError, match="nothing to resume"):
        train(_cfg(2), data176, tmp_path / "fresh", resume=True)


class _Payload:
    """A pickled object whose loading would run code: what a crafted checkpoint.pt carries."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_resume_never_runs_code_from_a_crafted_checkpoint(tmp_path, data176, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(_cfg(2), data176, tmp_path / "b")
    ckpt = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    ckpt["history"] = _Payload()
    torch.save(ckpt, tmp_path / "b" / CHECKPOINT)
    with pytest.raises(ConfigError, match="not a checkpoint written by `sclvi train`"):
        train(_cfg(4), data176, tmp_path / "b", resume=True)
    assert not (tmp_path / "PWNED").exists()
    assert not resumable(tmp_path / "b", _cfg(4))  # so the benchmark trains afresh instead of failing
    assert not (tmp_path / "PWNED").exists()


def test_the_quality_benchmark_goes_on_from_an_interrupted_training(tmp_path, data176):
    """A benchmark stopped mid-training (the bundle not yet written) resumes from the checkpoint, and reports
    the training time of both runs."""
    from sclvi.benchmarks.quality import _trained_bundle

    straight = train(_cfg(4), data176, tmp_path / "straight")
    train(_cfg(2), data176, tmp_path / "work")
    (tmp_path / "work" / "bundle.json").unlink()  # as if stopped before the end: only the checkpoint is there
    ckpt = torch.load(tmp_path / "work" / CHECKPOINT, weights_only=True)
    torch.save({**ckpt, "seconds": 1000.0}, tmp_path / "work" / CHECKPOINT)  # marks the checkpoint's run
    bundle, train_s = _trained_bundle(_cfg(4), data176, tmp_path / "work")
    assert bundle.manifest["training"]["steps"] == 4 and bundle.has_bank()
    for k, v in straight.weights.items():
        np.testing.assert_array_equal(bundle.weights[k], v, err_msg=k)
    assert 1000 < train_s < 1000 + straight.manifest["training"]["seconds"] + 30  # both runs, not a fresh one


@pytest.mark.parametrize("task, n_classes", [("jigsaw8", 8), ("none", 0)])
def test_ablation_tasks(tmp_path, data176, task, n_classes):
    bundle = train(_cfg(2, task), data176, tmp_path / task)
    ckpt = torch.load(bundle.path / CHECKPOINT, weights_only=False)
    heads = {k: v.shape for k, v in ckpt["heads"].items() if k.endswith("net.4.weight")}
    assert heads == ({"32.net.4.weight": (n_classes, 128), "64.net.4.weight": (n_classes, 128)} if n_classes else {})
    assert bundle.manifest["config"]["train"]["task"] == task


def test_images_too_small_for_the_large_grid_are_refused(tmp_path, data176):
    cfg = tiny_config(128, train={"steps": 1, "batch_size": 2})
    with pytest.raises(ConfigError, match="enlarge the input"):
        train(cfg, data176, tmp_path / "b")


def test_holdout_split_keeps_images_out_of_the_pretext_task():
    from sclvi.train.trainer import split_holdout

    fit, held = split_holdout(20, 0.1, seed=0)
    assert len(held) == 2 and len(fit) == 18 and not set(fit) & set(held) and set(fit) | set(held) == set(range(20))
    assert len(split_holdout(3, 0.5, 0)[1]) == 1  # at least 2 images stay for training
    assert len(split_holdout(10, 0.0, 0)[1]) == 0
    assert (split_holdout(20, 0.1, 0)[1] == held).all()  # seeded


def test_early_stop_compares_window_means_so_one_noisy_evaluation_does_not_end_a_rising_run():
    from sclvi.train.monitor import EarlyStop

    # the tiles' seed-2 curve (held-out accuracy every 50 steps): a lucky 0.141 at step 100, then two low
    # evaluations; a best-so-far rule stopped it at step 250, the window means see it still rising
    rising = (0.107, 0.141, 0.123, 0.100, 0.146, 0.160, 0.172, 0.181)
    stop = EarlyStop(patience=3, min_delta=0.01)
    assert not any(stop.update(v) for v in rising)
    plateau = EarlyStop(patience=2, min_delta=0.01)
    assert [plateau.update(v) for v in (0.10, 0.20, 0.30, 0.305, 0.309, 0.30)] == [False, False, False, False, False, True]
    assert plateau.gain() == pytest.approx((0.309 + 0.30 - 0.30 - 0.305) / 2)
    never = EarlyStop(patience=0, min_delta=0.01)
    assert not any(never.update(0.1) for _ in range(10))


# held-out pretext accuracy every 50 steps of the tiles' seed-0 model at the default budget (3000 steps, bundle.json)
TILES_3000_STEPS = (
    0.156, 0.225, 0.197, 0.219, 0.205, 0.205, 0.209, 0.254, 0.242, 0.221, 0.287, 0.254, 0.264, 0.293, 0.312,
    0.285, 0.268, 0.318, 0.309, 0.318, 0.336, 0.281, 0.322, 0.312, 0.301, 0.326, 0.328, 0.32, 0.328, 0.311,
    0.326, 0.342, 0.334, 0.344, 0.344, 0.361, 0.332, 0.324, 0.367, 0.354, 0.361, 0.348, 0.352, 0.367, 0.35,
    0.348, 0.361, 0.361, 0.381, 0.389, 0.375, 0.377, 0.377, 0.357, 0.359, 0.375, 0.365, 0.375, 0.369, 0.381,
)


def test_the_default_training_runs_its_whole_schedule_on_a_slowly_rising_real_curve():
    """The finding behind `early_stop_patience: 0`: on a real 3000-step curve that rose from 0.21 to 0.38, the
    plateau rule (patience 3) fires at step 350, before the cosine schedule has lowered the learning rate."""
    from sclvi.config import TrainConfig
    from sclvi.train.monitor import stop_step

    evals = [{"step": 50 * (i + 1), "heldout_acc": v} for i, v in enumerate(TILES_3000_STEPS)]
    default = TrainConfig()
    assert default.steps == 50 * len(evals) == 3000
    assert stop_step(evals, default.early_stop_patience, default.early_stop_min_delta) is None
    assert stop_step(evals, 3, default.early_stop_min_delta) == 350  # the previous default's stop
    assert np.mean(TILES_3000_STEPS[-3:]) - np.mean(TILES_3000_STEPS[4:7]) > 0.15  # and the curve kept rising


def test_a_cached_run_counts_as_trained_with_a_config_only_when_its_stop_replays_the_same():
    from sclvi.benchmarks.quality import same_training
    from sclvi.config import build_config
    from sclvi.train.monitor import stop_step

    rising = [{"step": 50 * (i + 1), "heldout_acc": 0.1 + 0.05 * i} for i in range(8)]
    flat = [{"step": 50 * (i + 1), "heldout_acc": v} for i, v in enumerate((0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.3))]
    assert stop_step(rising, patience=3, min_delta=0.01) is None
    assert stop_step(flat, patience=3, min_delta=0.01) == 350
    assert stop_step(flat, patience=0, min_delta=0.01) is None

    disarmed = build_config("lite", {"train": {"steps": 400, "early_stop_patience": 0}})
    armed = build_config("lite", {"train": {"steps": 400, "early_stop_patience": 3}})
    ran = {"steps": 400, "stopped_early": False}
    assert same_training(disarmed, {**ran, "evals": rising}, armed)  # the stop would not have fired
    assert not same_training(disarmed, {**ran, "evals": flat}, armed)  # armed, it would have stopped at 350
    assert not same_training(disarmed, {**ran, "steps": 250, "evals": rising[:5]}, armed)
    other_seed = armed.model_copy(update={"train": armed.train.model_copy(update={"seed": 1})})
    assert not same_training(disarmed, {**ran, "evals": rising}, other_seed)
    assert same_training(armed, {"steps": 350, "stopped_early": True, "evals": flat[:7]}, armed)
    # equal configs, but the run was stopped at 250 by an earlier stop rule that this one does not replay
    assert not same_training(armed, {"steps": 250, "stopped_early": True, "evals": rising[:5]}, armed)


def test_code_statistics_tell_collapsed_codes_from_healthy_ones():
    from sclvi.train.monitor import collapsed, describe_codes

    rng = np.random.default_rng(0)
    healthy = describe_codes(rng.normal(size=(400, 16)))
    assert healthy["effective_rank"] > 12 and healthy["dim_std"] > 0.9
    line = np.outer(rng.normal(size=400), rng.normal(size=16)) + 1e-3 * rng.normal(size=(400, 16))
    assert describe_codes(line)["effective_rank"] < 1.1
    assert collapsed({"32": describe_codes(line), "64": healthy}) == ["32"]


def test_training_records_pretext_accuracy_codes_and_a_curve(tmp_path, data176):
    cfg = tiny_config(176, train={"steps": 4, "batch_size": 4, "threads": 1, "eval_every": 2, "holdout_frac": 0.25})
    bundle = train(cfg, data176, tmp_path / "b")
    t = bundle.manifest["training"]
    assert t["n_heldout"] == 1 and [e["step"] for e in t["evals"]] == [2, 4]
    assert t["pretext"]["chance"] == pytest.approx(1 / 12)
    for key in ("heldout_acc32", "heldout_acc64", "train_acc32", "train_acc64"):
        assert 0.0 <= t["pretext"][key] <= 1.0
    assert set(t["codes"]) == {"32", "64"} and t["codes"]["32"]["effective_rank"] > 0
    png = bundle.path / "training_curve.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_training_stops_early_on_a_pretext_plateau(tmp_path, data176):
    # lr ~0: the held-out accuracy cannot change, so the second window of 2 evaluations gains nothing
    cfg = tiny_config(176, train={"steps": 50, "batch_size": 4, "threads": 1, "eval_every": 1, "lr": 1e-12,
                                  "early_stop_patience": 2, "schedule": "constant"})
    bundle = train(cfg, data176, tmp_path / "b")
    assert bundle.manifest["training"]["stopped_early"] is True
    assert bundle.manifest["training"]["steps"] == 4  # two windows of 2 evaluations, no gain between them


def test_spread_loss_penalises_collapsed_codes_and_pushes_them_apart():
    from sclvi.train.trainer import spread_loss

    gen = torch.Generator().manual_seed(0)
    healthy = 0.4 * torch.randn(256, 16, generator=gen)
    line = torch.randn(256, 1, generator=gen) * torch.randn(1, 16, generator=gen) * 0.4  # rank 1
    tiny = 0.01 * torch.randn(256, 16, generator=gen)
    assert spread_loss(healthy, 0.25) < 0.2
    assert spread_loss(line, 0.25) > 5 * spread_loss(healthy, 0.25)
    assert spread_loss(tiny, 0.25) > 0.2
    z = tiny.clone().requires_grad_(True)
    spread_loss(z, 0.25).backward()
    with torch.no_grad():
        assert (z - 0.1 * z.grad).std(dim=0).mean() > z.std(dim=0).mean()  # a gradient step spreads the codes


def test_a_time_budget_shortens_the_schedule_on_a_slow_machine(tmp_path, data176):
    """`sclvi train` with no flags must end within the hour on a slow box too: the steps that fit the budget at
    the pace of the first steps, recorded in the bundle; a fast enough machine trains every step."""
    from sclvi.config import TrainConfig
    from sclvi.train.trainer import PROBE_STEPS, steps_within

    tc = TrainConfig(steps=3000, max_minutes=50)
    assert steps_within(tc, 0.8) == 3000  # 40 min: every step
    assert steps_within(tc, 1.4) == 2035  # 70 min asked: 50 min x 0.95 / 1.4 s
    assert steps_within(tc.model_copy(update={"max_minutes": 0.0}), 10.0) == 3000
    assert steps_within(tc, 1e6) == PROBE_STEPS  # never fewer than the steps already taken
    asked = PROBE_STEPS + 10
    cfg = tiny_config(176, train={"steps": asked, "batch_size": 4, "threads": 1, "max_minutes": 1e-5})
    bundle = train(cfg, data176, tmp_path / "b")
    training = bundle.manifest["training"]
    assert training["steps"] == bundle.config.train.steps == PROBE_STEPS
    assert training["time_budget"]["steps_asked"] == asked and training["time_budget"]["steps_planned"] == PROBE_STEPS
    # resumed (an interrupted run), it keeps the plan and its schedule instead of going on to every step asked
    again = train(cfg, data176, tmp_path / "b", resume=True).manifest["training"]
    assert again["steps"] == PROBE_STEPS and again["time_budget"] == training["time_budget"]
    unbudgeted = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_minutes": 0.0})})
    every = train(unbudgeted, data176, tmp_path / "b", resume=True).manifest["training"]  # the budget lifted
    assert every["steps"] == asked and every["time_budget"] is None
    roomy = train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_minutes": 60.0})}), data176,
                  tmp_path / "c")
    assert roomy.manifest["training"]["steps"] == asked and roomy.manifest["training"]["time_budget"]["steps_planned"] == asked
