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


def save_training_curve(
    path: Path, history: list[dict[str, float]], evals: list[dict[str, float]], chance: float | None, title: str
) -> None:
    """Loss per step and pretext accuracy (training batches smoothed, held-out at each evaluation)
    against chance: the picture that says whether the encoder learned anything."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    steps = np.arange(1, len(history) + 1)
    if history:
        loss = np.array([h["loss"] for h in history])
        ax_loss.plot(steps, loss, lw=0.5, alpha=0.4, color="C0")
        ax_loss.plot(steps, _smooth(loss), color="C0")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    for i, k in enumerate((32, 64)):
        acc = np.array([h.get(f"acc{k}", np.nan) for h in history], dtype=float)
        if np.isfinite(acc).any():
            ax_acc.plot(steps, _smooth(acc), color=f"C{i}", lw=1, alpha=0.7, label=f"train {k} px")
        held = [(e["step"], e[f"heldout_acc{k}"]) for e in evals if f"heldout_acc{k}" in e]
        if held:
            ax_acc.plot(*zip(*held), "o-", color=f"C{i}", ms=3, label=f"held-out {k} px")
        defect = np.array([h.get(f"defect_acc{k}", np.nan) for h in history], dtype=float)
        if np.isfinite(defect).any():  # the synthetic-defect term (4 classes, fresh defects every step)
            ax_acc.plot(steps, _smooth(defect), color=f"C{i + 2}", lw=1, ls="--", label=f"synthetic defects {k} px")
    if chance is not None:
        ax_acc.axhline(chance, color="k", ls=":", lw=0.8, label="chance")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1)
    if ax_acc.get_legend_handles_labels()[0]:  # nothing to label without a pretext task
        ax_acc.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _smooth(x: np.ndarray, window: int = 25) -> np.ndarray:
    """Moving average that ignores NaN (steps without a pretext task)."""
    ok = np.isfinite(x)
    w = np.ones(min(window, max(1, len(x))))
    num = np.convolve(np.where(ok, x, 0.0), w, "same")
    den = np.convolve(ok.astype(float), w, "same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den
