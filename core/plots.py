"""Pictures a person reads: image | heatmap | ground truth overlays, and ROC curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: factories and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_overlay(
    path: Path, image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None, title: str, vmax: float
) -> None:
    """Three panels: the input, the anomaly map over it, and the ground truth (if any)."""
    panels = 3 if mask is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.4))
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(image)
    axes[1].imshow(anomaly_map, cmap="jet", alpha=0.5, vmin=0, vmax=vmax)
    axes[1].set_title(f"anomaly map (max {anomaly_map.max():.3g})")
    if mask is not None:
        axes[2].imshow(mask, cmap="gray")
        axes[2].set_title("ground truth")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_roc(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> None:
    """ROC curves, one per entry: name -> (fpr, tpr, auroc)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
