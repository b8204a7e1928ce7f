"""Self-supervised training of both encoders: L = L_SSL + alpha * L_pSVDD, summed over both scales.

Writes a model bundle (weights, config, mean image, training metadata) and a resumable checkpoint.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sclvi import __version__
from sclvi.bundle import ModelBundle, load_bundle, save_bundle
from sclvi.config import Config, config_from_dict, config_to_dict
from sclvi.dataset import read_dataset
from sclvi.errors import ConfigError, DataError
from sclvi.images import mean_image, read_rgb
from sclvi.model import SCLVINet, build_model, state_to_numpy
from sclvi.train.heads import PositionClassifier
from sclvi.train.pretext import N_CLASSES, PatchPairs, PretextSampler

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
SCALES = (32, 64)


@dataclass
class TrainState:
    model: SCLVINet
    heads: torch.nn.ModuleDict
    optimizer: torch.optim.Optimizer
    sampler: PretextSampler
    step: int = 0


def _crop(images: torch.Tensor, pairs_image: np.ndarray, corners: np.ndarray, size: int) -> torch.Tensor:
    return torch.stack([images[i, :, y : y + size, x : x + size] for i, (y, x) in zip(pairs_image, corners)])


def _new_state(cfg: Config, n_images: int) -> TrainState:
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = build_model(cfg.encoder)
    n_cls = N_CLASSES[tc.task]
    heads = torch.nn.ModuleDict(
        {str(k): PositionClassifier(cfg.encoder.embed_dim, n_cls) for k in SCALES} if n_cls else {}
    )
    params = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.Adam(params, lr=tc.lr)
    sampler = PretextSampler(n_images, cfg.geometry.image_size, tc.jitter_frac, tc.svdd_shift_frac, tc.seed)
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
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)


def _load_checkpoint(path: Path, cfg: Config, n_images: int) -> TrainState:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    saved = config_from_dict(ckpt["config"])
    # Only the step budget may change on resume; anything else would silently mix two trainings.
    if saved.model_copy(update={"train": saved.train.model_copy(update={"steps": cfg.train.steps})}) != cfg:
        raise ConfigError(f"{path} was trained with a different config; resume with the same config (only --steps may change)")
    state = _new_state(cfg, n_images)
    state.model.load_state_dict(ckpt["model"])
    state.heads.load_state_dict(ckpt["heads"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.sampler.rng.bit_generator.state = ckpt["sampler_rng"]
    torch.set_rng_state(ckpt["torch_rng"])
    state.step = ckpt["step"]
    return state


def _scale_loss(cfg: Config, state: TrainState, images: torch.Tensor, k: int) -> tuple[torch.Tensor, float, float]:
    """Loss of one scale and its pretext accuracy (NaN without a pretext task)."""
    tc = cfg.train
    b = tc.batch_size
    twins: PatchPairs = state.sampler.svdd_twins(k, b)
    crops = [_crop(images, twins.image, twins.first, k), _crop(images, twins.image, twins.second, k)]
    pretext = None
    if tc.task != "none":
        pretext = state.sampler.grid_pairs(tc.task, k, b)
        for corners in (pretext.first, pretext.second):
            shift = torch.from_numpy(state.sampler.gray_shift(b, tc.gray_shift))
            crops.append(_crop(images, pretext.image, corners, k) + shift)
    codes = state.model.embed(torch.cat(crops)).split(b)
    svdd = (codes[0] - codes[1]).norm(dim=1).mean()
    loss = tc.alpha * svdd
    acc = float("nan")
    if pretext is not None:
        logits = state.heads[str(k)](codes[2], codes[3])
        target = torch.from_numpy(pretext.label)
        loss = loss + F.cross_entropy(logits, target)
        acc = float((logits.argmax(1) == target).float().mean())
    return loss, acc, svdd.item()


def _mean_or_none(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def train(cfg: Config, data_root: str | Path, out: str | Path, resume: bool = False) -> ModelBundle:
    """Train on the defect-free images of `data_root` (train/good) and write a bundle to `out`."""
    out = Path(out)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    dataset = read_dataset(data_root, need_test=False)
    size = cfg.geometry.image_size
    log.info("training %s preset, task %s, on %d images from %s", cfg.preset, tc.task, len(dataset.train), data_root)
    frames = np.stack([read_rgb(p, size) for p in tqdm(dataset.train, desc="load images", unit="img")])
    if len(frames) < 2:
        raise DataError(f"{data_root}/train/good has {len(frames)} image(s); training needs at least 2")
    mean = mean_image(frames)
    images = torch.from_numpy(((frames.astype(np.float32) - mean) / 255.0).transpose(0, 3, 1, 2).copy())
    del frames

    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    if resume:
        if not ckpt_path.is_file():
            raise DataError(f"nothing to resume: {ckpt_path} does not exist")
        state = _load_checkpoint(ckpt_path, cfg, len(images))
        log.info("resumed from %s at step %d", ckpt_path, state.step)
    else:
        state = _new_state(cfg, len(images))

    state.model.train()
    t0 = time.perf_counter()
    history: list[dict[str, float]] = []
    bar = tqdm(total=tc.steps, initial=state.step, desc="train", unit="step")
    while state.step < tc.steps:
        state.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros(())
        stats: dict[str, float] = {}
        for k in SCALES:
            loss, acc, svdd = _scale_loss(cfg, state, images, k)
            total = total + loss
            stats[f"acc{k}"], stats[f"svdd{k}"] = acc, svdd
        total.backward()
        state.optimizer.step()
        state.step += 1
        stats["loss"] = total.item()
        history.append(stats)
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc32=f"{stats['acc32']:.2f}", acc64=f"{stats['acc64']:.2f}")
        if state.step % tc.checkpoint_every == 0 or state.step == tc.steps:
            _save_checkpoint(ckpt_path, cfg, state)
    bar.close()
    seconds = time.perf_counter() - t0
    tail = history[-max(1, len(history) // 10) :] if history else []
    training: dict[str, Any] = {
        "data": str(Path(data_root).resolve()),
        "n_images": len(images),
        "steps": state.step,
        "seconds_this_run": round(seconds, 1),
        "final": {k: _mean_or_none([h[k] for h in tail]) for k in (tail[0] if tail else {})},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "sclvi": __version__,
    }
    save_bundle(out, cfg, state_to_numpy(state.model), mean, training)
    log.info("bundle written to %s (%d steps, %.1f s)", out, state.step, seconds)
    return load_bundle(out)
