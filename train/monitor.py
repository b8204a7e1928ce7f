"""Is the encoder learning? Held-out pretext accuracy, code statistics and the early stop.

The pretext accuracy on images the task never trained on is the one number that says whether the
self-supervised task taught the encoder anything; the code statistics say whether its output has
collapsed (all patches mapped to nearly one point, which makes every k-NN distance meaningless).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sclvi.train.pretext import N_CLASSES, PatchPairs, PretextSampler

#: Effective rank below which the codes are reported as collapsed.
COLLAPSED_RANK = 2.0


def crop(images: torch.Tensor, which: np.ndarray, corners: np.ndarray, size: int) -> torch.Tensor:
    return torch.stack([images[i, :, y : y + size, x : x + size] for i, (y, x) in zip(which, corners)])


def chance_accuracy(task: str) -> float | None:
    """The accuracy of guessing (classes are drawn uniformly), None without a pretext task."""
    n = N_CLASSES[task]
    return 1.0 / n if n else None


@dataclass
class HeldOutPretext:
    """A fixed set of pretext pairs from held-out images, so successive evaluations compare like with like."""

    images: torch.Tensor
    pairs: dict[int, PatchPairs]

    @classmethod
    def sample(cls, task: str, images: torch.Tensor, scales: tuple[int, ...], jitter_frac: float, n: int, seed: int) -> "HeldOutPretext | None":
        if N_CLASSES[task] == 0 or len(images) == 0:
            return None
        sampler = PretextSampler(len(images), tuple(images.shape[-2:]), jitter_frac, 1 / 32, seed)
        return cls(images, {k: sampler.grid_pairs(task, k, n) for k in scales})

    @torch.no_grad()
    def accuracy(self, model: torch.nn.Module, heads: torch.nn.ModuleDict) -> dict[int, float]:
        """Pretext accuracy per patch scale, model in eval mode (restored afterwards)."""
        was_training = model.training
        model.eval()
        heads.eval()
        out = {}
        for k, p in self.pairs.items():
            h1 = model.embed(crop(self.images, p.image, p.first, k))
            h2 = model.embed(crop(self.images, p.image, p.second, k))
            pred = heads[str(k)](h1, h2).argmax(1).numpy()
            out[k] = float((pred == p.label).mean())
        model.train(was_training)
        heads.train(was_training)
        return out


@torch.no_grad()
def code_statistics(model: torch.nn.Module, images: torch.Tensor, n: int = 512, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per scale: mean per-dimension std, the spread of the codes, their effective rank, and
    the mean nearest-neighbour distance among random patches (what the k-NN sees)."""
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    stats = {}
    hw = np.array(images.shape[-2:])
    for k in (32, 64):
        which = rng.integers(0, len(images), n)
        corners = rng.integers(0, hw - k + 1, (n, 2))
        z = model.embed(crop(images, which, corners, k)).double().numpy()
        stats[str(k)] = describe_codes(z)
    model.train(was_training)
    return stats


def describe_codes(z: np.ndarray) -> dict[str, float]:
    """Statistics of a (N, D) code sample; effective rank = (sum eig)^2 / sum eig^2 of the covariance."""
    centred = z - z.mean(axis=0)
    eig = np.clip(np.linalg.eigvalsh(centred.T @ centred / max(1, len(z) - 1)), 0, None)
    rank = float(eig.sum() ** 2 / (eig**2).sum()) if eig.sum() > 0 else 0.0
    d2 = (z * z).sum(1)[:, None] + (z * z).sum(1)[None] - 2 * z @ z.T
    np.fill_diagonal(d2, np.inf)
    return {
        "dim_std": float(z.std(axis=0).mean()),
        "spread": float(np.sqrt((centred**2).sum(axis=1)).mean()),
        "effective_rank": rank,
        "nn_distance": float(np.sqrt(np.clip(d2.min(axis=1), 0, None)).mean()),
    }


def collapsed(stats: dict[str, dict[str, float]]) -> list[str]:
    """The scales whose codes have collapsed (effective rank under COLLAPSED_RANK)."""
    return [k for k, s in stats.items() if s["effective_rank"] < COLLAPSED_RANK]


@dataclass
class EarlyStop:
    """Stop when the mean held-out pretext accuracy of the last `patience` evaluations has not gained
    `min_delta` over the mean of the `patience` evaluations before them.

    Means of windows, not a best-so-far: one evaluation on 2 x 256 held-out pairs has a standard error
    of ~0.015 at accuracy 0.15, more than the 0.01 that counts as progress, and a best-so-far keeps its
    luckiest value, so a run that was still learning stopped by chance (tiles: stops at 250-550 steps
    across seeds, the one at 250 the weakest model)."""

    patience: int
    min_delta: float
    history: list[float] = field(default_factory=list)

    def gain(self) -> float:
        """Mean of the last `patience` evaluations minus the mean of the `patience` before them."""
        p = self.patience
        return float(np.mean(self.history[-p:]) - np.mean(self.history[-2 * p : -p]))

    def update(self, value: float) -> bool:
        """Record one evaluation; True when training should stop."""
        self.history.append(value)
        p = self.patience
        return p > 0 and len(self.history) >= 2 * p and self.gain() < self.min_delta


def stop_step(evals: list[dict[str, Any]], patience: int, min_delta: float) -> int | None:
    """The step of the first evaluation in `evals` at which an early stop with these settings fires (None:
    it never does). A stop at a run's last step ends nothing: the run was over anyway."""
    stopper = EarlyStop(patience, min_delta)
    for e in evals:
        if "heldout_acc" in e and stopper.update(e["heldout_acc"]):
            return int(e["step"])
    return None
