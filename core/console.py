"""What the commands print on the terminal about a result: the evaluation table and the pretext verdict.
Kept apart from the CLI so the demo prints the same lines as `sclvi train` and `sclvi eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def print_report(report: dict[str, Any]) -> None:
    """A short table on the terminal: overall, then one row per defect type."""
    from rich.console import Console
    from rich.table import Table

    def fmt(v: Any) -> str:
        return "-" if v is None or v != v else f"{100 * v:.1f}"

    table = Table(title=f"{Path(report['dataset']).name}  ({report['seconds_per_image'] * 1000:.0f} ms/image)")
    for col in ("subset", "n", "image AUROC", "pixel AUROC", "pixel AUROC vs good parts", "PRO"):
        table.add_column(col, justify="right" if col != "subset" else "left")
    floor = report.get("floor") or {}
    shown = floor if "image_auroc" in floor else None
    rows = [("all", report, shown)] + [(d, m, shown["per_defect"].get(d) if shown else None)
                                       for d, m in report["per_defect"].items()]
    for name, m, f in rows:
        table.add_row(name, str(m["n"]), fmt(m["image_auroc"]), fmt(m.get("pixel_auroc")),
                      fmt(m.get("pixel_auroc_vs_good")), fmt(m.get("pro")))
        if f is not None:  # the raw-pixel floor under each row, dimmed: what no learning gets on the same parts
            table.add_row("  raw-pixel floor", "", fmt(f["image_auroc"]), fmt(f.get("pixel_auroc")),
                          fmt(f.get("pixel_auroc_vs_good")), fmt(f.get("pro")), style="dim")
    console = Console()
    console.print(table)
    if shown is not None:
        adds = 100 * report["learning_adds_image_auroc"]
        console.print(f"learning adds {adds:+.1f} image AUROC points over the raw-pixel floor"
                      + ("" if adds > 0 else ": the trained encoder does no better than raw pixels on these parts"))
    elif floor:
        console.print(f"raw-pixel floor not available for this geometry: {floor['unavailable']}")


def pretext_summary(training: dict[str, Any]) -> str:
    """One line that says whether the encoder learned its pretext task (held-out images vs chance)."""
    p = training.get("pretext") or {}
    if p.get("heldout_acc32") is None:
        return "pretext accuracy: not measured (no pretext task or no held-out images)"
    line = (f"pretext accuracy on held-out images after {training['steps']} steps: {p['heldout_acc32']:.2f} (32 px), "
            f"{p['heldout_acc64']:.2f} (64 px); chance {p['chance']:.3f}")
    if p.get("heldout_pairs"):
        from sclvi.metrics import above_chance

        learned = [f"{k} px" for k in (32, 64) if above_chance(p[f"heldout_acc{k}"], p["heldout_pairs"], p["chance"])[0]]
        line += (f" - above chance (binomial p < 0.01, {p['heldout_pairs']} pairs per scale): {', '.join(learned)}" if learned
                 else " - NOT distinguishable from chance yet: train longer (more --steps) before trusting this model")
    if p.get("defect_acc32") is not None:
        line += (f"; synthetic-defect accuracy {p['defect_acc32']:.2f} / {p['defect_acc64']:.2f} "
                 f"(32 / 64 px, training batches; chance 0.25)")
    return line
