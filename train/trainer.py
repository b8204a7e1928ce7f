"""Self-supervised training of both encoders: L = L_SSL + alpha * L_pSVDD, summed over both scales.

Writes a model bundle (weights, config, mean image, training metadata) and a resumable checkpoint.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sclvi import __version__
from sclvi.bundle import ModelBundle, load_bundle, save_bundle
from sclvi.config import Config, TrainConfig, config_from_dict, config_to_dict
from sclvi.dataset import read_dataset
from sclvi.errors import ConfigError, DataError, SclviError
from sclvi.images import mean_image, normalise
from sclvi.roi import image_sizes, read_input
from sclvi.model import SCLVINet, build_model, state_to_numpy
from sclvi.plots import save_training_curve
from sclvi.train.defects import make_defects
from sclvi.train.heads import DefectClassifier, PositionClassifier
from sclvi.train.monitor import EarlyStop, HeldOutPretext, chance_accuracy, code_statistics, collapsed, crop
from sclvi.train.pretext import N_CLASSES, PatchPairs, PretextSampler

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CURVE = "training_curve.png"
SCALES = (32, 64)
#: Held-out pretext pairs per scale at each evaluation.
HELD_OUT_PAIRS = 256
#: Steps timed before a time budget (train.max_minutes) plans the rest.
PROBE_STEPS = 20
#: Share of the budget planned for training steps; held-out evaluations and checkpoints take the rest.
BUDGET_SHARE = 0.95


@dataclass
class TrainState:
    model: SCLVINet
    heads: torch.nn.ModuleDict
    optimizer: torch.optim.Optimizer
    sampler: PretextSampler
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per step
    evals: list[dict[str, float]] = field(default_factory=list)  # one entry per held-out evaluation
    seconds: float = 0.0  # training time of the runs before this one (a resumed training reports its total)
    budget: dict[str, Any] | None = None  # the time budget's plan (train.max_minutes), kept across resumes


def learning_rate(cfg: Config, step: int) -> float:
    """The schedule: constant, or cosine from lr down to 5 % of lr at the last step."""
    tc = cfg.train
    if tc.schedule == "constant":
        return tc.lr
    t = min(1.0, step / max(1, tc.steps))
    # a Python float: the optimizer's state goes into the checkpoint, which loads with weights_only (no numpy scalars)
    return float(tc.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t))))


def steps_within(tc: TrainConfig, seconds_per_step: float) -> int:
    """The steps `tc.max_minutes` allows at the measured pace: `tc.steps` when they fit (or with no budget),
    never fewer than the probe steps already taken."""
    if not tc.max_minutes or seconds_per_step <= 0:
        return tc.steps
    fit = int(tc.max_minutes * 60 * BUDGET_SHARE / seconds_per_step)
    return max(min(PROBE_STEPS, tc.steps), min(tc.steps, fit))


def split_holdout(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) image indices: a seeded `frac` of the images, at least 1 when frac > 0 and
    at least 2 images stay for training."""
    n_out = min(max(1, int(round(n * frac))), n - 2) if frac > 0 else 0
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_out:]), np.sort(order[:n_out])


def _warn_on_squash(sizes: dict[tuple[int, int], Path], side: int) -> None:
    """Say when resizing to a square distorts the images: defects and texture change shape with the aspect."""
    off = {(w, h): p for (w, h), p in sizes.items() if abs(w / h - 1) > 0.02}
    if off:
        listed = ", ".join(f"{w}x{h} (e.g. {p.name})" for (w, h), p in list(off.items())[:3])
        log.warning("images of another aspect (%s%s) are squashed to %dx%d: for camera frames of one size, train "
                    "at their own geometry (--roi / --scale; `sclvi roi DATA` proposes a region)",
                    listed, ", ..." if len(off) > 3 else "", side, side)


def _new_state(cfg: Config, n_images: int) -> TrainState:
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = build_model(cfg.encoder)
    n_cls = N_CLASSES[tc.task]
    heads = torch.nn.ModuleDict(
        {str(k): PositionClassifier(cfg.encoder.embed_dim, n_cls) for k in SCALES} if n_cls else {}
    )
    if tc.defect_weight:
        heads.update({f"defect{k}": DefectClassifier(cfg.encoder.embed_dim, 1 + len(tc.defect_kinds)) for k in SCALES})
    params = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.Adam(params, lr=tc.lr)
    sampler = PretextSampler(n_images, cfg.geometry.input_hw, tc.jitter_frac, tc.svdd_shift_frac, tc.seed)
    for k in SCALES:
        if n_cls:
            sampler.check_fits(k)
    return TrainState(model, heads, optimizer, sampler)


def _save_checkpoint(path: Path, cfg: Config, state: TrainState) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "config": config_to_dict(cfg),
            "step": state.step,
            "model": state.model.state_dict(),
            "heads": state.heads.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "sampler_rng": state.sampler.rng.bit_generator.state,
            "history": state.history,
            "evals": state.evals,
            "seconds": state.seconds,
            "budget": state.budget,
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code from a file
    except Exception as exc:
        raise ConfigError(
            f"{path} is not a checkpoint written by `sclvi train` (refused to load: {str(exc).splitlines()[0][:200]}); "
            "delete it to train from scratch"
        ) from None


def _same_config(saved: Config, cfg: Config) -> bool:
    """Only the step and time budgets may change on resume; anything else would silently mix two trainings."""
    budgets = {"steps": cfg.train.steps, "max_minutes": cfg.train.max_minutes}
    return saved.model_copy(update={"train": saved.train.model_copy(update=budgets)}) == cfg


def resumable(out: str | Path, cfg: Config) -> bool:
    """Whether `out` holds a readable checkpoint of a training with `cfg`, so `train(..., resume=True)` goes on
    from it. Why: a benchmark stopped mid-training (a session's end, a reboot) should lose at most
    `checkpoint_every` steps, not the whole run."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        return False
    try:
        if _same_config(config_from_dict(_read_checkpoint(path)["config"]), cfg):
            return True
        reason = "it was trained with another config"
    except (SclviError, KeyError, TypeError) as e:
        reason = str(e)
    log.warning("not going on from %s (%s): training from scratch", path, reason)  # an hour lost should say why
    return False


def _load_checkpoint(path: Path, cfg: Config, n_images: int) -> TrainState:
    ckpt = _read_checkpoint(path)
    if not _same_config(config_from_dict(ckpt["config"]), cfg):
        raise ConfigError(f"{path} was trained with a different config; resume with the same config (only --steps may change)")
    state = _new_state(cfg, n_images)
    state.model.load_state_dict(ckpt["model"])
    state.heads.load_state_dict(ckpt["heads"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.sampler.rng.bit_generator.state = ckpt["sampler_rng"]
    torch.set_rng_state(ckpt["torch_rng"])
    state.step = ckpt["step"]
    state.history = ckpt.get("history") or []
    state.evals = ckpt.get("evals") or []
    state.seconds = float(ckpt.get("seconds") or 0.0)
    state.budget = ckpt.get("budget")
    return state


def spread_loss(z: torch.Tensor, target: float) -> torch.Tensor:
    """Anti-collapse term (VICReg's variance and covariance terms, Bardes et al. 2022): a hinge that keeps
    every code dimension's std over the batch at `target` or more, plus the squared off-diagonal
    covariances so the dimensions carry different information.

    Why: the relative-position task is solved by codes that encode where a patch sits, about two
    numbers on an aligned part, so cross-entropy alone shrinks the codes to rank ~1.5 within 50 steps
    (measured: effective rank 13-16 at initialisation, 1.5-1.8 after 50-60 steps), and a k-NN over such
    codes cannot see a defect that does not move the patch's apparent position.
    """
    std = torch.sqrt(z.var(dim=0) + 1e-4)
    variance = F.relu(target - std).mean()
    c = z - z.mean(dim=0)
    cov = (c.T @ c) / max(1, len(z) - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return variance + (off**2).sum() / z.shape[1] / target**2


def _scale_loss(cfg: Config, state: TrainState, images: torch.Tensor, k: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one scale, its pretext accuracy (NaN without a pretext task), SVDD distance and synthetic-defect
    accuracy (NaN without that term)."""
    tc = cfg.train
    b = tc.batch_size
    twins: PatchPairs = state.sampler.svdd_twins(k, b)
    crops = [crop(images, twins.image, twins.first, k), crop(images, twins.image, twins.second, k)]
    pretext = None
    if tc.task != "none":
        pretext = state.sampler.grid_pairs(tc.task, k, b)
        for corners in (pretext.first, pretext.second):
            shift = torch.from_numpy(state.sampler.gray_shift(b, tc.gray_shift))
            crops.append(crop(images, pretext.image, corners, k) + shift)
    defect_kind = None
    if tc.defect_weight:  # the SVDD twins, damaged (donors: other places of other images), against the clean ones
        donors = state.sampler.svdd_twins(k, b)
        damaged, defect_kind = make_defects(crops[1], crop(images, donors.image, donors.first, k), state.sampler.rng,
                                              tc.defect_kinds)
        crops.append(damaged)
    all_codes = state.model.embed(torch.cat(crops))
    codes = all_codes.split(b)
    svdd = (codes[0] - codes[1]).norm(dim=1).mean()
    loss = tc.alpha * svdd
    if tc.spread_weight:
        loss = loss + tc.spread_weight * spread_loss(all_codes, tc.spread_target)
    stats = {f"acc{k}": float("nan"), f"svdd{k}": svdd.item(), f"defect_acc{k}": float("nan")}
    if pretext is not None:
        logits = state.heads[str(k)](codes[2], codes[3])
        target = torch.from_numpy(pretext.label)
        loss = loss + F.cross_entropy(logits, target)
        stats[f"acc{k}"] = float((logits.argmax(1) == target).float().mean())
    if defect_kind is not None:
        logits = state.heads[f"defect{k}"](torch.cat([codes[0], codes[-1]]))
        target = torch.cat([torch.zeros(b, dtype=torch.long), defect_kind])
        loss = loss + tc.defect_weight * F.cross_entropy(logits, target)
        stats[f"defect_acc{k}"] = float((logits.argmax(1) == target).float().mean())
    return loss, stats


def _mean_or_none(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _evaluate(state: TrainState, held: HeldOutPretext | None, window: list[dict[str, float]]) -> dict[str, float]:
    """Training accuracy over the steps since the last evaluation, and held-out accuracy now."""
    row: dict[str, float] = {"step": state.step}
    for k in SCALES:
        acc = [h.get(f"defect_acc{k}", float("nan")) for h in window]
        if np.isfinite(acc).any():
            row[f"defect_acc{k}"] = float(np.nanmean(acc))
    if held is not None:  # no pretext task (or no held-out images): nothing to measure, and no NaN in bundle.json
        for k in SCALES:
            row[f"train_acc{k}"] = float(np.nanmean([h[f"acc{k}"] for h in window]))
        acc = held.accuracy(state.model, state.heads)
        for k in SCALES:
            row[f"heldout_acc{k}"] = acc[k]
        row["heldout_acc"] = float(np.mean(list(acc.values())))
    return row


def train(cfg: Config, data_root: str | Path, out: str | Path, resume: bool = False) -> ModelBundle:
    """Train on the defect-free images of `data_root` (train/good) and write a bundle to `out`.

    A seeded `train.holdout_frac` of the images is kept out of the pretext task: every
    `train.eval_every` steps the pretext accuracy on them is logged, and training stops early once it
    has not improved for `train.early_stop_patience` evaluations. The bundle records the curve
    (training_curve.png), the final accuracies and the code statistics.
    """
    out = Path(out)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    dataset = read_dataset(data_root, need_test=False)
    log.info("training %s preset, task %s, on %d images from %s", cfg.preset, tc.task, len(dataset.train), data_root)
    log.info("geometry: %s", cfg.geometry.describe())
    if cfg.geometry.frame is None:
        _warn_on_squash(image_sizes(dataset.train), cfg.geometry.image_size)
    frames = np.stack([read_input(p, cfg.geometry) for p in tqdm(dataset.train, desc="load images", unit="img")])
    if len(frames) < 2:
        raise DataError(f"{data_root}/train/good has {len(frames)} image(s); training needs at least 2")
    mode = cfg.preprocess.photometric
    mean = mean_image(frames, mode, cfg.preprocess.mean)
    all_images = torch.from_numpy(np.stack([normalise(f, mean, mode) for f in frames]))
    del frames
    fit, held_idx = split_holdout(len(all_images), tc.holdout_frac if N_CLASSES[tc.task] else 0.0, tc.seed)
    images = all_images[fit]
    held = HeldOutPretext.sample(tc.task, all_images[held_idx], SCALES, tc.jitter_frac, HELD_OUT_PAIRS, tc.seed + 1)
    chance = chance_accuracy(tc.task)
    if held is not None:
        log.info("pretext task on %d images, %d held out to measure it (chance accuracy %.3f)", len(fit), len(held_idx), chance)

    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    if resume:
        if not ckpt_path.is_file():
            raise DataError(f"nothing to resume: {ckpt_path} does not exist")
        state = _load_checkpoint(ckpt_path, cfg, len(images))
        log.info("resumed from %s at step %d", ckpt_path, state.step)
        planned = (state.budget or {}).get("steps_planned", tc.steps)
        if not tc.max_minutes:
            state.budget = None  # the budget is off now: every step asked
        elif planned < tc.steps:  # keep the plan (and its cosine schedule) the time budget made at the start
            log.info("the time budget (train.max_minutes %g) planned %d steps for this training: going on to those "
                     "(--max-minutes 0 trains every step)", tc.max_minutes, planned)
            cfg = cfg.model_copy(update={"train": tc.model_copy(update={"steps": planned})})
            tc = cfg.train
    else:
        state = _new_state(cfg, len(images))
    stopper = EarlyStop(tc.early_stop_patience, tc.early_stop_min_delta)
    for e in state.evals:
        if "heldout_acc" in e:
            stopper.update(e["heldout_acc"])

    state.model.train()
    t0 = time.perf_counter()
    stopped_early = False
    # A budget plans a training from scratch; a resumed one keeps that plan (above).
    plan_budget = bool(tc.max_minutes) and not resume and tc.steps > PROBE_STEPS
    bar = tqdm(total=tc.steps, initial=state.step, desc="train", unit="step")
    while state.step < tc.steps:
        for group in state.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, state.step)
        state.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros(())
        stats: dict[str, float] = {}
        for k in SCALES:
            loss, scale_stats = _scale_loss(cfg, state, images, k)
            total = total + loss
            stats.update(scale_stats)
        total.backward()
        state.optimizer.step()
        state.step += 1
        stats["loss"] = total.item()
        state.history.append(stats)
        if plan_budget and state.step == PROBE_STEPS:
            pace = (time.perf_counter() - t0) / PROBE_STEPS
            fit = steps_within(tc, pace)
            state.budget = {"max_minutes": tc.max_minutes, "seconds_per_step": round(pace, 3),
                            "steps_asked": tc.steps, "steps_planned": fit}
            if fit < tc.steps:
                log.warning("this machine trains at %.2f s/step: %d steps would take %.0f min, over train.max_minutes "
                            "%g; training %d steps instead, the cosine schedule shortened to fit (--max-minutes 0 "
                            "trains every step; fewer steps detect less, README: Detection quality)",
                            pace, tc.steps, tc.steps * pace / 60, tc.max_minutes, fit)
                cfg = cfg.model_copy(update={"train": tc.model_copy(update={"steps": fit})})  # what the bundle records
                tc = cfg.train
                bar.total = fit
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc32=f"{stats['acc32']:.2f}", acc64=f"{stats['acc64']:.2f}",
                        **({"defect": f"{stats['defect_acc32']:.2f}"} if tc.defect_weight else {}))
        if state.step % tc.eval_every == 0 or state.step == tc.steps:
            row = _evaluate(state, held, state.history[-tc.eval_every :])
            state.evals.append(row)
            if "defect_acc32" in row:
                log.info("step %d: synthetic-defect accuracy (training batches) %.3f / %.3f (32 / 64 px; chance %.3f)",
                         state.step, row["defect_acc32"], row["defect_acc64"], 1 / (1 + len(tc.defect_kinds)))
            if held is not None:
                log.info(
                    "step %d: pretext accuracy train %.3f / %.3f, held-out %.3f / %.3f (32 / 64 px; chance %.3f)",
                    state.step, row["train_acc32"], row["train_acc64"], row["heldout_acc32"], row["heldout_acc64"], chance,
                )
                if stopper.update(row["heldout_acc"]) and state.step < tc.steps:
                    log.info("early stop at step %d: the mean held-out pretext accuracy of the last %d evaluations "
                             "gained %.3f over the %d before (less than %.3f)", state.step, tc.early_stop_patience,
                             stopper.gain(), tc.early_stop_patience, tc.early_stop_min_delta)
                    stopped_early = True
        if state.step % tc.checkpoint_every == 0 or state.step == tc.steps or stopped_early:
            _save_checkpoint(ckpt_path, cfg, replace(state, seconds=state.seconds + time.perf_counter() - t0))
        if stopped_early:
            break
    bar.close()
    seconds = time.perf_counter() - t0
    history = state.history
    tail = history[-max(1, len(history) // 10) :] if history else []
    codes = code_statistics(state.model, all_images[held_idx] if len(held_idx) else images, seed=tc.seed)
    if collapsed(codes):
        log.warning("the codes of scale(s) %s have collapsed (effective rank < 2): distances in the memory bank "
                    "will say little; check the training data and config", ", ".join(collapsed(codes)))
    last = state.evals[-1] if state.evals else {}
    training: dict[str, Any] = {
        "data": str(Path(data_root).resolve()),
        "n_images": len(all_images),
        "n_heldout": int(len(held_idx)),
        "steps": state.step,
        "stopped_early": stopped_early,
        "seconds_this_run": round(seconds, 1),
        "seconds": round(state.seconds + seconds, 1),  # over every run of a resumed training
        "time_budget": state.budget,  # None: no budget
        "final": {k: _mean_or_none([h[k] for h in tail]) for k in (tail[0] if tail else {})},
        "pretext": {
            "chance": chance,
            "heldout_pairs": HELD_OUT_PAIRS if held is not None else None,  # per scale: what a significance test needs
            **{k: (None if not np.isfinite(v) else round(v, 4)) for k, v in last.items() if k != "step"},
        },
        "evals": state.evals,
        "codes": codes,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "sclvi": __version__,
    }
    save_bundle(out, cfg, state_to_numpy(state.model), mean, training)
    save_training_curve(out / CURVE, history, state.evals, chance, f"{Path(data_root).name}: {cfg.preset}, {tc.task}")
    if held is not None:
        log.info("pretext accuracy at the end: held-out %.3f (32 px) / %.3f (64 px), chance %.3f; curve: %s",
                 last["heldout_acc32"], last["heldout_acc64"], chance, out / CURVE)
    log.info("bundle written to %s (%d steps, %.1f s)", out, state.step, seconds)
    return load_bundle(out)
