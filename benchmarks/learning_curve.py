"""Detection quality against training steps: the evidence behind the default step budget.

    sclvi bench quality --steps 100,300,900 [--sets A,B] [--seeds 0]

Per data set, one model per step budget (the paper's 12-class task, the protocol's preset and default
training otherwise), each trained from scratch with the cosine schedule over its own budget and the early
stop switched off, so a point says what that many steps give; the budget equal to the product default
is the default model itself (early stop armed: the `steps` column says whether it fired). The floors
(core/floors.py) are drawn beside the curve. Writes quality-steps-<protocol>.md / .json / .png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sclvi.benchmarks.common import machine, save_report  # noqa: E402
from sclvi.benchmarks.protocols import PROTOCOLS, model_cache, protocol_config, report_stem  # noqa: E402
from sclvi.benchmarks.quality import floor_rows, model_facts, quality_row, train_and_score  # noqa: E402
from sclvi.benchmarks.quality_report import is_floor, model_cells, pct  # noqa: E402


def budget_variant(protocol: str, steps: int) -> tuple[str, dict[str, Any]]:
    """(cache slug, config overrides) of one point: the default model at the default budget, else `steps`
    with no early stop."""
    default = protocol_config(protocol, "scl12").train.steps
    if steps == default:
        return "default", {}
    return f"steps{steps}", {"train": {"steps": steps, "early_stop_patience": 0}}


def run_curve(name: str, root: Path, protocol: str, budgets: list[int], seeds: list[int], work: Path,
              progress: Any = None) -> list[dict[str, Any]]:
    """The floors, then one row per (budget, seed)."""
    from sclvi.dataset import read_dataset
    from sclvi.evaluate import test_masks

    ds = read_dataset(root)
    masks = test_masks(ds, protocol_config(protocol, "scl12").geometry)
    rows = floor_rows(name, ds, protocol, masks, work)
    for steps in budgets:
        slug, over = budget_variant(protocol, steps)
        for seed in seeds:
            cfg = protocol_config(protocol, "scl12", seed=seed, variant=over)
            bundle, scores, maps, embed_s, score_s, train_s = train_and_score(cfg, ds, model_cache(work, name, "scl12", seed, slug))
            rows.append(quality_row(name, ds, masks, cfg.preset, "trained", "scl12", seed, scores, maps, embed_s, score_s,
                                    train_s, {"budget": steps, **model_facts(bundle)}))
            if progress is not None:
                progress(rows)
    return rows


def save_curve_plot(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Image (and pixel) AUROC and held-out pretext accuracy against steps, the floors as flat lines."""
    sets = list(dict.fromkeys(r["set"] for r in rows))
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.8), squeeze=False)
    for ax, name in zip(axes[0], sets):
        mine = [r for r in rows if r["set"] == name]
        trained = sorted((r for r in mine if r["kind"] == "trained"), key=lambda r: r["budget"])
        for metric, style in (("image_auroc", "o-"), ("pixel_auroc", "s--")):
            pts = [(r["budget"], 100 * r[metric]) for r in trained if r.get(metric) is not None and np.isfinite(r[metric])]
            if pts:
                ax.plot(*zip(*pts), style, label=metric.replace("_", " "))
        for i, r in enumerate(r for r in mine if is_floor(r)):
            ax.axhline(100 * r["image_auroc"], color=f"C{i + 3}", ls=":", lw=1, label=f"{r['kind']} (image)")
        ax.set_xscale("log")
        ax.set_xlabel("training steps (log)")
        ax.set_ylabel("AUROC %")
        ax.set_title(name, fontsize=9)
        acc = [(r["budget"], r["pretext_acc"]) for r in trained if r.get("pretext_acc") is not None]
        if acc:
            ax2 = ax.twinx()
            ax2.plot(*zip(*acc), "^-", color="0.5", ms=4, lw=0.8, label="held-out pretext acc")
            ax2.set_ylabel("pretext accuracy", color="0.5")
            ax2.set_ylim(0, max(0.5, max(a for _, a in acc) * 1.2))
            ax2.legend(fontsize=7, loc="lower right")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_curve_report(rows: list[dict[str, Any]], protocol: str, out: Path, seconds: float, tag: str = "") -> Path:
    info = machine()
    stem = report_stem(protocol, tag)
    cfg = protocol_config(protocol, "scl12")
    lines = [
        f"# Detection quality against training steps, {protocol} protocol",
        "",
        f"Preset `{cfg.preset}`, the paper's 12-class task, training {cfg.train.model_dump(exclude={'task', 'seed', 'threads', 'checkpoint_every', 'steps'})} "
        f"except the step budget; each budget trained from scratch (cosine over its own steps, early stop off) except "
        f"the product default ({cfg.train.steps} steps), which is the default model trained to its full step count "
        f"(the time budget `train.max_minutes` off, so every box trains the same steps; `sclvi train` with no flags "
        f"trains fewer on a box too slow for its budget). `train s` is each run's own training time, at the pace of "
        f"the box that day. Total wall time {seconds / 60:.0f} min on the machine below. Plot: `quality-steps-{stem}.png`.",
        "",
    ]
    for name in dict.fromkeys(r["set"] for r in rows):
        lines += [f"## {name}", "", "| row | steps | seed | image AUROC | pixel AUROC | PRO | pretext held-out / train | code rank 32 / 64 px | train s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["set"] == name):
            if r["kind"] != "trained":
                lines.append(f"| {r['kind']} | - | - | {pct(r['image_auroc'])} | {pct(r.get('pixel_auroc'))} | {pct(r.get('pro'))} | - | - | - |")
                continue
            pre, rank, steps, train = model_cells(r)
            lines.append(f"| trained, budget {r['budget']} | {steps} | {r['seed']} | {pct(r['image_auroc'])} | {pct(r.get('pixel_auroc'))} "
                         f"| {pct(r.get('pro'))} | {pre} | {rank} | {train} |")
        lines.append("")
    path = save_report(out, f"quality-steps-{stem}", lines, info, {"protocol": PROTOCOLS[protocol], "rows": rows})
    save_curve_plot(out / f"quality-steps-{stem}.png", rows, f"quality against training steps ({protocol} protocol)")
    return path
