"""Detection quality on real data, with the paper's ablations, under one fixed training budget.

    python -m sclvi.benchmarks.quality [--data ../shared/data] [--protocol cpu|gpu] [--sets ...]

Per data set: the Table 1 ablation (no SSL, Patch SVDD's 8-neighbour jigsaw, the paper's 12-class
task), the Figure 3 sweep of eta, the authors' scoring formula, and the bank reductions (coreset ratios,
position windows) with their scoring time. Test images are embedded once per trained model and scored
under every variant. Bundles are cached in --work, so an interrupted run resumes.
Writes quality-<protocol>.md / .json, ROC curves and example heatmaps to --out.

    python -m sclvi.benchmarks.quality --families lite dense-lite dense paper [--sets ...]

The encoder families instead: each preset trained with the paper's task under the protocol's budget
(its widths are the preset's own), scored at eta 10, next to its cost per frame. Rows accumulate in
quality-families-<protocol>.json keyed by (set, preset), so a slow preset can be run on one set later.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from sclvi.benchmarks.common import machine, machine_table, parse_args
from sclvi.bundle import load_bundle
from sclvi.config import Config, build_config
from sclvi.errors import SclviError

log = logging.getLogger(__name__)

#: The budgets. CPU: what 2 cores train in minutes; stated in every report.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "cpu": {
        "preset": "lite",
        "geometry": {"image_size": 256, "small_stride": 8, "large_stride": 16},
        "train": {"steps": 200, "batch_size": 32, "lr": 1e-3, "seed": 0},
        "bank": {"max_images": 200},
    },
    "gpu": {
        "preset": "paper",
        "geometry": {"image_size": 256, "small_stride": 4, "large_stride": 16},
        "train": {"steps": 3000, "batch_size": 64, "lr": 1e-4, "seed": 0},
        "bank": {"max_images": None},
    },
    "smoke": {  # the test suite's tiny version
        "preset": "lite",
        "encoder": {"conv_widths": (8, 8, 8, 8, 8, 8), "secondary_width": 8, "embed_dim": 8, "groups": 4},
        "geometry": {"image_size": 176, "small_stride": 16, "large_stride": 16},
        "train": {"steps": 2, "batch_size": 4, "lr": 1e-3, "seed": 0},
        "bank": {"max_images": 4},
    },
}
TASKS = ("none", "jigsaw8", "scl12")
ETAS = (1, 3, 5, 10, 20)
CORESETS = (0.1, 0.01)
WINDOWS = (2, 4)


def protocol_config(protocol: str, task: str, preset: str | None = None) -> Config:
    """The protocol's budget for one pretext task, on the protocol's preset or another one."""
    p = PROTOCOLS[protocol]
    overrides = {k: v for k, v in p.items() if k != "preset"}
    overrides["train"] = {**p["train"], "task": task}
    return build_config(preset or p["preset"], overrides)


def _trained_bundle(cfg: Config, data: Path, work: Path):
    """Reuse a cached bundle trained with exactly this config, else train one (and its bank)."""
    from sclvi.cli import _train_and_bank

    try:
        bundle = load_bundle(work)
        if bundle.config == cfg and bundle.has_bank():
            log.info("reusing %s", work)
            return bundle, bundle.manifest["training"].get("seconds_this_run")
    except SclviError:
        pass
    t0 = time.perf_counter()
    _train_and_bank(cfg, data, work)
    return load_bundle(work), time.perf_counter() - t0


def _variants(cfg: Config, task: str) -> list[tuple[str, dict[str, Any], float | None]]:
    """(label, scoring overrides, coreset ratio) to score for one trained model."""
    if task != "scl12":
        return [(f"{task}, eta 10", {}, None)]
    rows: list[tuple[str, dict[str, Any], float | None]] = [(f"scl12, eta {e}", {"eta": e}, None) for e in ETAS]
    rows.append(("scl12, eta 10, authors' formula", {"formula": "authors"}, None))
    rows += [(f"scl12, eta 10, coreset {r}", {}, r) for r in CORESETS]
    rows += [(f"scl12, eta 10, window +-{w} cells", {"position_window": w, "knn": "numba"}, None) for w in WINDOWS]
    return rows


def run_set(name: str, root: Path, protocol: str, work: Path, out: Path) -> dict[str, Any]:
    from sclvi.dataset import read_dataset
    from sclvi.engines import load_backend
    from sclvi.evaluate import embed_test_set, metrics_report, score_test_set, test_masks, write_overlays
    from sclvi.knn.coreset import greedy_coreset
    from sclvi.metrics import roc
    from sclvi.plots import save_roc

    ds = read_dataset(root)
    rows: list[dict[str, Any]] = []
    curves = {}
    labels = np.array([t.is_anomalous for t in ds.test])
    for task in TASKS:
        cfg = protocol_config(protocol, task)
        bundle, train_s = _trained_bundle(cfg, root, work / name / task)
        codes, embed_s = embed_test_set(bundle, ds, load_backend(bundle))
        masks = test_masks(ds, cfg.geometry.image_size)
        for label, scoring_over, ratio in _variants(cfg, task):
            scoring = cfg.scoring.model_copy(update=scoring_over)
            banks = None
            if ratio is not None:
                banks = {}
                for scale in ("small", "large"):
                    c, p, _ = bundle.bank_data(scale)
                    keep = greedy_coreset(np.asarray(c), ratio, cfg.bank.projection_dim, cfg.bank.seed)
                    banks[scale] = (np.asarray(c)[keep], np.asarray(p)[keep])
            try:
                scores, maps, score_s = score_test_set(bundle, codes, scoring, banks)
            except ValueError as exc:  # e.g. a window too narrow for eta: report, do not abort the run
                rows.append({"set": name, "row": label, "error": str(exc)})
                continue
            m = metrics_report(ds, scores, maps, masks)
            rows.append({"set": name, "row": label, "task": task, "train_s": train_s, "embed_ms": 1000 * embed_s,
                         "score_ms": 1000 * score_s, **m})
            log.info("%s | %s: image AUROC %.3f", name, label, m["image_auroc"])
            if label.endswith("eta 10"):
                curves[task] = (*roc(labels, scores), m["image_auroc"])
            if label == "scl12, eta 10":
                write_overlays(out / f"heatmaps-{protocol}-{name}", ds.test, maps, scores, cfg.geometry.image_size, 6, masks)
    save_roc(out / f"roc-{protocol}-{name}.png", curves, f"{name}: image ROC by pretext task ({protocol} budget)")
    return {"set": name, "n_test": len(ds.test), "n_train": len(ds.train), "has_masks": ds.has_masks, "rows": rows}


def run_families(name: str, root: Path, protocol: str, presets: list[str], work: Path) -> list[dict[str, Any]]:
    """One row per encoder preset: the paper's task at the protocol's budget, eta 10."""
    from sclvi.benchmarks.encoders import frame_macs
    from sclvi.dataset import read_dataset
    from sclvi.engines import load_backend
    from sclvi.evaluate import embed_test_set, metrics_report, score_test_set, test_masks

    ds = read_dataset(root)
    rows = []
    for preset in presets:
        cfg = protocol_config(protocol, "scl12", preset)
        cache = work / name / ("scl12" if preset == PROTOCOLS[protocol]["preset"] else f"scl12-{preset}")
        bundle, train_s = _trained_bundle(cfg, root, cache)
        codes, embed_s = embed_test_set(bundle, ds, load_backend(bundle))
        scores, maps, score_s = score_test_set(bundle, codes, cfg.scoring)
        m = metrics_report(ds, scores, maps, test_masks(ds, cfg.geometry.image_size))
        rows.append({"set": name, "preset": preset, "gmac_per_frame": frame_macs(cfg) / 1e9, "train_s": train_s,
                     "embed_ms": 1000 * embed_s, "score_ms": 1000 * score_s, **m})
        log.info("%s | %s: image AUROC %.3f", name, preset, m["image_auroc"])
    return rows


def write_families_report(rows: list[dict[str, Any]], protocol: str, out: Path) -> Path:
    """Merge these rows into the protocol's families JSON (keyed by set and preset) and rewrite the report."""
    store = out / f"quality-families-{protocol}.json"
    kept = json.loads(store.read_text())["rows"] if store.is_file() else []
    new = {(r["set"], r["preset"]) for r in rows}
    rows = [r for r in kept if (r["set"], r["preset"]) not in new] + rows
    info = machine()
    budget = PROTOCOLS[protocol]
    lines = [
        f"# Detection quality by encoder family, {protocol} protocol",
        "",
        f"Every row: the paper's 12-class task, eta 10, the same budget: geometry {budget['geometry']}, training "
        f"{budget['train']}, bank {budget['bank']}; widths are each preset's own. GMAC per frame at the protocol's size and "
        "strides (paper/lite: patch by patch; dense: one fully convolutional pass). `train s` is the "
        "training plus bank time; `embed ms` and `score ms` are per test image on the machine below (best installed "
        "backend, other work may have shared the 2 cores).",
        "",
    ]
    for name in dict.fromkeys(r["set"] for r in rows):
        lines += [f"## {name}", "", "| preset | GMAC / frame | image AUROC | pixel AUROC | PRO | train s | embed ms | score ms |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["set"] == name):
            train = "-" if r["train_s"] is None else f"{r['train_s']:.0f}"
            lines.append(f"| {r['preset']} | {r['gmac_per_frame']:.1f} | {_pct(r['image_auroc'])} | {_pct(r.get('pixel_auroc'))} "
                         f"| {_pct(r.get('pro'))} | {train} | {r['embed_ms']:.0f} | {r['score_ms']:.0f} |")
        lines.append("")
    lines += ["## Machine", "", machine_table(info), ""]
    path = out / f"quality-families-{protocol}.md"
    path.write_text("\n".join(lines))
    store.write_text(json.dumps({"machine": info, "protocol": budget, "rows": rows}, indent=2, default=str))
    return path


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def write_report(results: list[dict[str, Any]], protocol: str, out: Path, seconds: float) -> Path:
    info = machine()
    budget = PROTOCOLS[protocol]
    lines = [
        f"# Detection quality, {protocol} protocol",
        "",
        f"Budget (same for every row): preset `{budget['preset']}`, geometry {budget['geometry']}, "
        f"training {budget['train']}, bank {budget['bank']}. One seed (0). Total wall time {seconds / 60:.0f} min.",
        f"Metrics at the model's input size ({budget['geometry']['image_size']} px square): image AUROC; pixel AUROC and PRO (FPR <= 0.3) where the data set "
        "has masks. `embed ms` and `score ms` are per test image on this machine (encoder backend: the best installed).",
        "",
    ]
    for res in results:
        lines += [f"## {res['set']} ({res['n_train']} train, {res['n_test']} test images)", ""]
        lines += ["| row | image AUROC | pixel AUROC | PRO | embed ms | score ms |", "|---|---:|---:|---:|---:|---:|"]
        for r in res["rows"]:
            if "error" in r:
                lines.append(f"| {r['row']} | not run: {r['error']} | | | | |")
                continue
            lines.append(
                f"| {r['row']} | {_pct(r['image_auroc'])} | {_pct(r.get('pixel_auroc'))} | {_pct(r.get('pro'))} "
                f"| {r['embed_ms']:.0f} | {r['score_ms']:.0f} |"
            )
        lines += ["", "Per defect type (each against all good test images), image AUROC by pretext task at eta 10:", ""]
        main_rows = [r for r in res["rows"] if r.get("row", "").endswith("eta 10") and "error" not in r]
        defects = sorted(main_rows[0]["per_defect"]) if main_rows else []
        lines += ["| task | " + " | ".join(defects) + " |", "|---|" + "---:|" * len(defects)]
        for r in main_rows:
            lines.append(f"| {r['task']} | " + " | ".join(_pct(r["per_defect"][d]["image_auroc"]) for d in defects) + " |")
        if res["has_masks"] and main_rows:
            lines += ["", "Per defect type, pixel AUROC / PRO (scl12, eta 10):", ""]
            r = next(r for r in main_rows if r["task"] == "scl12")
            lines += ["| defect | pixel AUROC | PRO |", "|---|---:|---:|"]
            lines += [f"| {d} | {_pct(r['per_defect'][d].get('pixel_auroc'))} | {_pct(r['per_defect'][d].get('pro'))} |" for d in defects]
        lines += ["", f"ROC: `roc-{protocol}-{res['set']}.png`; heatmaps: `heatmaps-{protocol}-{res['set']}/`", ""]
    lines += ["## Machine", "", machine_table(info), ""]
    path = out / f"quality-{protocol}.md"
    path.write_text("\n".join(lines))
    (out / f"quality-{protocol}.json").write_text(json.dumps({"machine": info, "protocol": budget, "results": results}, indent=2, default=str))
    return path


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder holding the data sets")
    ap.add_argument("--sets", nargs="+", default=["mvtec_bottle", "magnetic_tile"])
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sclvi-bench"), help="cache of trained bundles")
    ap.add_argument("--families", nargs="+", default=None, metavar="PRESET",
                    help="compare these encoder presets (scl12, eta 10) instead of running the ablation")
    args = parse_args(ap, argv)
    if args.families:
        for name in args.sets:
            path = write_families_report(run_families(name, args.data / name, args.protocol, args.families,
                                                      args.work / args.protocol), args.protocol, args.out)
        print(f"report: {path}")
        return path
    t0 = time.perf_counter()
    results = []
    for name in args.sets:
        results.append(run_set(name, args.data / name, args.protocol, args.work / args.protocol, args.out))
        path = write_report(results, args.protocol, args.out, time.perf_counter() - t0)  # partial reports as we go
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    main()
