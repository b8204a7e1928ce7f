"""The quality benchmark's report tables (markdown and JSON): the main table with floors, seeds and per-defect
figures, the encoder families and the paper's ablations; and the rows an earlier report keeps (`--merge`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import typer

from sclvi.benchmarks.common import machine, save_report
from sclvi.benchmarks.protocols import PROTOCOLS, protocol_config, report_stem

log = logging.getLogger(__name__)


def is_floor(row: dict[str, Any]) -> bool:
    """A no-learning floor row (`floor: raw pixels`, `floor: untrained encoder`) rather than a trained model's."""
    return row["kind"].startswith("floor")


def mean_of(*values: Any) -> float | None:
    """The mean of the values given (None where none is)."""
    ok = [v for v in values if v is not None]
    return float(np.mean(ok)) if ok else None


def kept_rows(report: Path, protocol: str, measured: list[str]) -> list[dict[str, Any]]:
    """The rows of `report` (an earlier quality JSON) for the sets this run does not measure, each stamped with the
    date that report was measured (rows that carry their own `measured` keep it). A report of another protocol
    is refused: its rows would sit beside rows trained and scored at another budget."""
    try:
        earlier = json.loads(report.read_text())
        rows, budget, info = earlier["rows"], earlier["protocol"], earlier["machine"]
        date = info["date"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise typer.BadParameter(f"{report}: not a quality report written by `sclvi bench quality` ({exc})",
                                 param_hint="--merge") from None
    if budget != json.loads(json.dumps(PROTOCOLS[protocol], default=str)):  # as the report stored it (tuples as lists)
        raise typer.BadParameter(f"{report} was measured at another protocol ({budget}); this run's {protocol} protocol "
                                 f"is {PROTOCOLS[protocol]}: merge reports of one protocol", param_hint="--merge")
    kept = [{"measured": date, "measured_on": f"{info.get('cpu')}, {info.get('cores')} cores", **r}
            for r in rows if r["set"] not in measured]
    if not kept:
        raise typer.BadParameter(f"{report} has no rows of a set this run does not measure again ({', '.join(measured)})",
                                 param_hint="--merge")
    log.info("kept from %s: %d rows of %s", report, len(kept), ", ".join(dict.fromkeys(r["set"] for r in kept)))
    return kept


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (set, kind, task, variant), and the margin of each trained mean over the best floor."""
    out = []
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == name]
        floor = max((r["image_auroc"] for r in mine if is_floor(r)), default=float("nan"))
        for key in dict.fromkeys((r["kind"], r["task"], r.get("variant")) for r in mine):
            group = [r for r in mine if (r["kind"], r["task"], r.get("variant")) == key]
            entry: dict[str, Any] = {"set": name, "kind": key[0], "task": key[1], "variant": key[2], "n": len(group)}
            for metric in ("image_auroc", "pixel_auroc", "pixel_auroc_vs_good", "pro", "pretext_acc"):
                vals = [r[metric] for r in group if r.get(metric) is not None and np.isfinite(r[metric])]
                entry[metric] = float(np.mean(vals)) if vals else None
                entry[f"{metric}_std"] = float(np.std(vals)) if len(vals) > 1 else None
            entry["over_best_floor"] = None if key[0] != "trained" else entry["image_auroc"] - floor
            out.append(entry)
    return out


def write_quality_report(rows: list[dict[str, Any]], protocol: str, out: Path, seconds: float, tag: str = "") -> Path:
    info = machine()
    stem = report_stem(protocol, tag)
    budget = PROTOCOLS[protocol]
    cfg = protocol_config(protocol, "scl12")
    summary = summarise(rows)
    lines = [
        f"# Detection quality, {protocol} protocol, next to the no-learning floors",
        "",
        f"Preset `{budget['preset']}`, geometry {budget['geometry']}, bank {budget['bank']}; training "
        f"{cfg.train.model_dump(exclude={'task', 'seed', 'threads', 'checkpoint_every'})} (the product default where "
        f"the protocol sets nothing); scoring eta {cfg.scoring.eta}, lambda {cfg.scoring.lam}, map smoothing sigma "
        f"{cfg.scoring.map_sigma} px, position window {cfg.scoring.position_window} (`auto`: the window the bank measured "
        f"on an aligned part, none otherwise; the `window` column). Wall time of this run {seconds / 60:.0f} min on the machine below.",
        f"Input: `preprocess.photometric: {cfg.preprocess.photometric}` (`frame`: each frame mapped to one gray-level mean "
        "and spread first; floors get the same input). Variants: `default` = the preset as `sclvi train` gives it, except "
        "that every step is trained (`train.max_minutes` 0: the benchmark sets no time budget, so every box trains the "
        "same steps); the "
        "others switch the product's departures from the paper (frame photometric step, `preprocess.mean: "
        f"{cfg.preprocess.mean}` = the mean gray level subtracted instead of the per-pixel mean image, synthetic-defect term "
        f"`train.defect_weight` = {cfg.train.defect_weight}, codes aggregated over `bank.neighbourhood` = "
        f"{cfg.bank.neighbourhood} x {cfg.bank.neighbourhood} patches, image retrieval `bank.retrieve` = {cfg.bank.retrieve}, "
        f"level normalisation `bank.level_norm` = {cfg.bank.level_norm}) off one at a time or on alone: a training change on the seeds its row says, a bank- or "
        "scoring-only one on every seed's own default model (no retraining, so the difference is that setting alone); "
        f"ideas that are not in the default (`finish defects`, `anti-collapse W`: `train.spread_weight` = W, "
        f"`defect weight W`: `train.defect_weight` = W, "
        f"`top-patch image score`: the image score the mean of the "
        f"map's top {cfg.geometry.small_patch}x{cfg.geometry.small_patch} px worth instead of its max) on alone.",
        "Floors: `raw pixels` = each 32-px patch averaged to 8x8 minus the per-pixel mean image, plain 1-NN, no network; "
        "`untrained encoder` = the preset's random initialisation with the same bank and scoring. "
        "`pretext` = pretext accuracy, mean of the 32-px and 64-px heads, on held-out images never trained on "
        "(and on the training batches); chance 1/12 for scl12, 1/8 for jigsaw8. Each model's curve is in its bundle "
        "(training_curve.png). `pixel AUROC vs good parts` = the defect pixels against the pixels of good parts only "
        "(the plain pixel AUROC also counts every unmarked pixel of a defective part as normal; where the two part, "
        "the maps score the rest of defective parts higher than good parts).",
        "",
    ]
    for name in dict.fromkeys(r["set"] for r in rows):
        lines += [f"## {name}", "", measured_line([r for r in rows if r["set"] == name], info), "",
                  "| row | image AUROC | pixel AUROC | pixel AUROC vs good parts | PRO | learning adds (image) "
                  "| pretext |", "|---|---:|---:|---:|---:|---:|---:|"]
        for e in (e for e in summary if e["set"] == name):
            label = e["kind"] if e["kind"] != "trained" else (
                f"trained, {e['task']}, {e.get('variant') or 'default'} ({e['n']} seed{'s' if e['n'] > 1 else ''})")
            adds = "" if e["over_best_floor"] is None else f"{100 * e['over_best_floor']:+.1f}"
            lines.append(f"| {label} | {pm_cell(e, 'image_auroc')} | {pm_cell(e, 'pixel_auroc')} | {pm_cell(e, 'pixel_auroc_vs_good')} "
                         f"| {pm_cell(e, 'pro')} | {adds} "
                         f"| {pm_cell(e, 'pretext_acc', pct=False)} |")
        lines += ["", "Every row:", "", "| kind | variant | task | seed | image AUROC | pixel AUROC | PRO | pretext held-out / train "
                  "| code rank 32 / 64 px | window | steps | train s | embed ms | score ms |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["set"] == name):
            pre, rank, steps, train = model_cells(r)
            win = "-" if r.get("window") is None else f"+-{r['window']}"
            lines.append(f"| {r['kind']} | {r.get('variant') or '-'} | {r['task'] or '-'} | {'-' if r['seed'] is None else r['seed']} | {pct(r['image_auroc'])} "
                         f"| {pct(r.get('pixel_auroc'))} | {pct(r.get('pro'))} | {pre} | {rank} "
                         f"| {win} | {steps} | {train} "
                         f"| {r['embed_ms']:.0f} | {r['score_ms']:.0f} |")
        lines += per_defect_table([r for r in rows if r["set"] == name])
        lines += ["", f"Heatmaps: `heatmaps-{stem}-{name}/`; training curve of the first model: "
                  f"`training-curve-{stem}-{name}.png`", ""]
    return save_report(out, f"quality-{stem}", lines, info, {"protocol": budget, "rows": rows, "summary": summary})


def measured_line(rows: list[dict[str, Any]], info: dict[str, str]) -> str:
    """When a set's rows were measured: in this run, or kept with --merge from an earlier report (its date and
    machine), so a merged report never passes old rows off as new."""
    kept = dict.fromkeys((r["measured"], r.get("measured_on")) for r in rows if "measured" in r)
    fresh = any("measured" not in r for r in rows)
    parts = ([f"in this run ({info['date']})"] if fresh else []) + [
        f"{date} on {on}, kept from an earlier report (`--merge`)" for date, on in kept]
    return "Measured " + "; ".join(parts) + "."


def per_defect_table(rows: list[dict[str, Any]]) -> list[str]:
    """Image / pixel AUROC per defect type (each type against all good images) for the floors and each task's
    trained rows, default and each variant (mean over seeds), with each type's share of the defect pixels: where
    a set's figures come from."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] != "trained":
            groups.setdefault(r["kind"], []).append(r)
        else:
            variant = r.get("variant") or "default"
            groups.setdefault(f"trained, {r['task']}" + ("" if variant == "default" else f", {variant}"), []).append(r)
    defects = list(dict.fromkeys(d for r in rows for d in r.get("per_defect", {})))
    if not defects or not groups:
        return []

    def cell(group: list[dict[str, Any]], d: str) -> str:
        vals = [[r["per_defect"][d].get(k) for r in group if d in r.get("per_defect", {})] for k in ("image_auroc", "pixel_auroc")]
        return " / ".join(pct(mean_of(*v)) for v in vals)

    lines = ["", "Per defect type (each against all good images), image / pixel AUROC; `share` = the type's part of all "
             "defect pixels, which is what weighs in the overall pixel AUROC:", "",
             "| defect | share | " + " | ".join(groups) + " |", "|---|---:|" + "---:|" * len(groups)]
    for d in defects:
        share = next((r["per_defect"][d]["pixel_share"] for r in rows  # rows cached before shares existed lack it
                      if r.get("per_defect", {}).get(d, {}).get("pixel_share") is not None), None)
        lines.append(f"| {d} | {'-' if share is None else f'{100 * share:.1f} %'} | "
                     + " | ".join(cell(g, d) for g in groups.values()) + " |")
    return lines


def model_cells(r: dict[str, Any]) -> tuple[str, str, str, str]:
    """A row's table cells for the model behind it: pretext accuracy held-out / train, code rank 32 / 64 px,
    steps trained (and whether the early stop fired), training seconds; "-" where the row has none (floors)."""
    pre = "-" if r.get("pretext_acc") is None else f"{r['pretext_acc']:.3f} / {r['pretext_acc_train']:.3f}"
    rank = "-" if r.get("code_rank32") is None else f"{r['code_rank32']:.1f} / {r['code_rank64']:.1f}"
    steps = "-" if r.get("steps") is None else f"{r['steps']}{' (early stop)' if r.get('stopped_early') else ''}"
    train = "-" if r.get("train_s") is None else f"{r['train_s']:.0f}"
    return pre, rank, steps, train


def pm_cell(entry: dict[str, Any], metric: str, pct: bool = True) -> str:
    v, sd = entry.get(metric), entry.get(f"{metric}_std")
    if v is None:
        return "-"
    scale = 100 if pct else 1
    fmt = ".1f" if pct else ".3f"
    return f"{scale * v:{fmt}}" + ("" if sd is None else f" ± {scale * sd:{fmt}}")


def write_families_report(rows: list[dict[str, Any]], protocol: str, out: Path, tag: str = "") -> Path:
    """Merge these rows into the protocol's families JSON (keyed by set, row and seed: a preset measured again
    replaces its rows) and rewrite the report: per set the floors, then each preset's mean ± std over its seeds."""
    stem = report_stem(protocol, tag)
    store = out / f"quality-families-{stem}.json"
    kept = json.loads(store.read_text())["rows"] if store.is_file() else []
    if any("kind" not in r for r in kept):
        log.info("%s: rows of the earlier format (no floors, no pretext) dropped", store)
        kept = [r for r in kept if "kind" in r]

    def key(r: dict[str, Any]) -> tuple:
        return r["set"], r["kind"], r.get("variant"), r.get("seed")

    new = {key(r) for r in rows}
    # floors first (as in the main table), then the presets in the order they were first measured
    rows = sorted([r for r in kept if key(r) not in new] + rows, key=lambda r: not is_floor(r))
    info = machine()
    budget = PROTOCOLS[protocol]
    cfg = protocol_config(protocol, "scl12")
    lines = [
        f"# Detection quality by encoder family, {protocol} protocol, next to the no-learning floors",
        "",
        f"Every trained row: the paper's 12-class task, eta 10, the same budget: geometry {budget['geometry']}, "
        f"bank {budget['bank']}, training {cfg.train.model_dump(exclude={'task', 'seed', 'threads', 'checkpoint_every'})} "
        "(the product default where the protocol sets nothing; every step trained, no time budget); widths are each "
        "preset's own; mean ± std over the seeds in `n`. Floors as in the main quality report (raw pixels: no network; "
        f"untrained encoder: the `{budget['preset']}` preset at random initialisation); `learning adds` = image AUROC over "
        "the better floor; `pretext` = held-out pretext accuracy, mean of the 32- and 64-px heads (chance 1/12); `steps` "
        "the mean steps trained (an early stop on the pretext plateau, where the protocol has one, ends some sooner). GMAC per "
        "frame at the protocol's size and strides (paper/lite: patch by patch; dense: one fully convolutional pass). "
        "`train s` is the training plus bank time; `embed ms` and `score ms` are per test image on the machine below "
        "(best installed backend, other work may have shared the 2 cores).",
        "",
    ]
    summary = summarise(rows)
    for name in dict.fromkeys(r["set"] for r in rows):
        lines += [f"## {name}", "", "| row | n | GMAC / frame | image AUROC | pixel AUROC | PRO | learning adds (image) "
                  "| pretext | steps | train s | embed ms | score ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for e in (e for e in summary if e["set"] == name):
            group = [r for r in rows if key(r)[:3] == (name, e["kind"], e["variant"])]
            label = e["kind"] if is_floor(e) else e["variant"]
            gmac = group[0].get("gmac_per_frame")
            cells = [pm_cell(e, m) for m in ("image_auroc", "pixel_auroc", "pro")]
            adds = "" if e["over_best_floor"] is None else f"{100 * e['over_best_floor']:+.1f}"
            timing = [_mean_cell([r.get(k) for r in group]) for k in ("train_s", "embed_ms", "score_ms")]
            early = sum(bool(r.get("stopped_early")) for r in group)
            steps = _mean_cell([r.get("steps") for r in group]) + (f" ({early} stopped early)" if early else "")
            lines.append(f"| {label} | {e['n']} | {'-' if gmac is None else f'{gmac:.1f}'} | {' | '.join(cells)} | {adds} "
                         f"| {pm_cell(e, 'pretext_acc', pct=False)} | {steps} | {' | '.join(timing)} |")
        lines.append("")
    return save_report(out, f"quality-families-{stem}", lines, info, {"protocol": budget, "rows": rows})


def _mean_cell(values: list[Any]) -> str:
    """A steps or timing column: the mean over the seeds that have it, whole units."""
    ok = [v for v in values if v is not None]
    return "-" if not ok else f"{float(np.mean(ok)):.0f}"


def pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def write_ablation_report(results: list[dict[str, Any]], protocol: str, out: Path, seconds: float, tag: str = "") -> Path:
    info = machine()
    stem = report_stem(protocol, tag)
    budget = PROTOCOLS[protocol]
    lines = [
        f"# Detection quality: the paper's ablations, {protocol} protocol",
        "",
        f"Budget (same for every row): preset `{budget['preset']}`, geometry {budget['geometry']}, "
        f"training {budget['train']} (other keys: the product defaults), bank {budget['bank']}. One seed (0). Total wall time {seconds / 60:.0f} min.",
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
                f"| {r['row']} | {pct(r['image_auroc'])} | {pct(r.get('pixel_auroc'))} | {pct(r.get('pro'))} "
                f"| {r['embed_ms']:.0f} | {r['score_ms']:.0f} |"
            )
        lines += ["", "Per defect type (each against all good test images), image AUROC by pretext task at eta 10:", ""]
        main_rows = [r for r in res["rows"] if r.get("row", "").endswith("eta 10") and "error" not in r]
        defects = sorted(main_rows[0]["per_defect"]) if main_rows else []
        lines += ["| task | " + " | ".join(defects) + " |", "|---|" + "---:|" * len(defects)]
        for r in main_rows:
            lines.append(f"| {r['task']} | " + " | ".join(pct(r["per_defect"][d]["image_auroc"]) for d in defects) + " |")
        if res["has_masks"] and main_rows:
            lines += ["", "Per defect type, pixel AUROC / PRO (scl12, eta 10):", ""]
            r = next(r for r in main_rows if r["task"] == "scl12")
            lines += ["| defect | pixel AUROC | PRO |", "|---|---:|---:|"]
            lines += [f"| {d} | {pct(r['per_defect'][d].get('pixel_auroc'))} | {pct(r['per_defect'][d].get('pro'))} |" for d in defects]
        lines += ["", f"ROC: `roc-{stem}-{res['set']}.png`; heatmaps: `heatmaps-{stem}-{res['set']}/`", ""]
    return save_report(out, f"quality-ablation-{stem}", lines, info, {"protocol": budget, "results": results})
