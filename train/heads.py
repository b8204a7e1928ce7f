"""Pretext classifier heads (training only): an MLP on the difference of two codes, as Patch SVDD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NormalizedLinear(nn.Module):
    """Linear layer with unit-norm weight columns: keeps the logits' scale from drifting."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight / self.weight.norm(dim=0, keepdim=True).clamp_min(1e-12)
        return F.linear(x, w, self.bias)


class PositionClassifier(nn.Module):
    """Predicts the relative position class of two patches from E(p1) - E(p2)."""

    def __init__(self, embed_dim: int, n_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.LeakyReLU(0.1),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.1),
            NormalizedLinear(hidden, n_classes),
        )

    def forward(self, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        return self.net(h1 - h2)


class DefectClassifier(nn.Module):
    """Tells a clean patch from the synthetic defect kinds (train/defects.py) from its code alone: the
    codes must carry what damage looks like for the k-NN to see it."""

    def __init__(self, embed_dim: int, n_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.LeakyReLU(0.1), NormalizedLinear(hidden, n_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)
