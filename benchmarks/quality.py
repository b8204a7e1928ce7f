"""Detection quality on real data, always next to the no-learning floors, over several seeds.

    sclvi bench quality [--data ../shared/data] [--protocol cpu|quick|gpu] [--sets A,B] [--seeds 0,1,2]
                        [--tasks scl12,jigsaw8,none]

Per data set, rows of one table (quality-<protocol>.md / .json): the raw-pixel floor and the untrained
encoder (benchmarks/floors.py), then the protocol's preset trained with each pretext task and seed, at
the product's default training unless the protocol says otherwise, with each model's held-out pretext
accuracy and code statistics. Bundles are cached in --work, so an interrupted run resumes (one stopped
mid-training goes on from its last checkpoint).

    sclvi bench quality --ablation        the paper's ablations on one trained model per task: the eta
                                          sweep, the authors' formula, coresets and position windows
    sclvi bench quality --families P,...  the encoder presets side by side (scl12, eta 10)
    sclvi bench quality --improvements all|SLUG,...  also departures from the paper alone (IMPROVEMENTS; all, or
                                                   those named: paper-loss-and-input, no-code-aggregation, ...)
    sclvi bench quality --steps N,...     the learning curve: quality against the step budget (learning_curve.py)
    sclvi bench quality --sets A --merge OLD.json   one report with set A measured now and the other sets' rows of an
                                          earlier report (each set says when it was measured)
    sclvi bench quality --tasks none --label tasks-none   a side run: its files are quality-tasks-none-<protocol>.md,
                                          heatmaps-tasks-none-<protocol>-<set>/, ..., beside the main report
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import typer

from sclvi.benchmarks.common import OUT, benchmark_app, invoke, listed, machine, machine_table, start
from sclvi.bundle import load_bundle
from sclvi.config import Config, deep_merge, build_config
from sclvi.errors import SclviError

log = logging.getLogger(__name__)

#: The budgets. Training keys not given here are the product's defaults (config.TrainConfig), so the
#: cpu protocol trains what `sclvi train DATA --out B` gives a user on a CPU box fast enough for every step within
#: its time budget (3000 steps, 35-70 min per model on 2 cores; protocol_config turns the budget off). `quick` is
#: the earlier 600-step default, for comparisons that train many models. The cpu bank is capped at 200
#: images to keep scoring time in bounds, where the product's bank holds every training image (on a set with
#: many varied images, like magnetic_tile's 802, the product scores higher than this protocol: see README).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "cpu": {
        "preset": "dense-lite",
        "geometry": {"image_size": 256, "small_stride": 8, "large_stride": 16},
        "train": {},
        "bank": {"max_images": 200},
    },
    "cpu-full-bank": {  # the cpu protocol with what `sclvi train` puts in the bank: every training image
        "models": "cpu",  # shares the cpu protocol's trained bundles (their banks rebuilt, no retraining)
        "preset": "dense-lite",
        "geometry": {"image_size": 256, "small_stride": 8, "large_stride": 16},
        "train": {},
        "bank": {"max_images": None},
    },
    "quick": {  # the earlier default (600 steps, early stop on a pretext plateau): about 7 min per model
        "preset": "dense-lite",
        "geometry": {"image_size": 256, "small_stride": 8, "large_stride": 16},
        "train": {"steps": 600, "early_stop_patience": 3},
        "bank": {"max_images": 200},
    },
    "gpu": {
        "preset": "paper",
        "geometry": {"image_size": 256, "small_stride": 4, "large_stride": 16},
        "train": {"steps": 3000, "batch_size": 64, "lr": 1e-4},
        "bank": {"max_images": None},
    },
    "smoke": {  # the test suite's tiny version
        "preset": "lite",
        "encoder": {"conv_widths": (8, 8, 8, 8, 8, 8), "secondary_width": 8, "embed_dim": 8, "groups": 4},
        "geometry": {"image_size": 176, "small_stride": 16, "large_stride": 16},
        # an armed (never firing) early stop, so the tests see a budget variant switch it off
        "train": {"steps": 2, "batch_size": 4, "lr": 1e-3, "eval_every": 1, "early_stop_patience": 3},
        "bank": {"max_images": 4},
    },
}
TASKS = ("none", "jigsaw8", "scl12")
#: The protocols as a command-line choice (typer checks the value and lists them in --help).
Protocol = Enum("Protocol", {name: name for name in sorted(PROTOCOLS)}, type=str)
#: `--improvements`: the product's departures from the paper, each alone and both off, on the protocol's
#: preset (label -> config overrides); the `default` rows have them all.
IMPROVEMENTS: dict[str, dict[str, Any]] = {
    "paper loss and input": {"preprocess": {"photometric": "none", "mean": "image"}, "train": {"defect_weight": 0.0}},
    "synthetic defects only": {"preprocess": {"photometric": "none", "mean": "image"}, "train": {"defect_weight": 1.0}},
    "frame photometric only": {"preprocess": {"photometric": "frame", "mean": "image"}, "train": {"defect_weight": 0.0}},
    "flat mean only": {"preprocess": {"photometric": "none", "mean": "flat"}, "train": {"defect_weight": 0.0}},
    # the default with the paper's per-pixel mean image (the flat mean alone switched off)
    "per-pixel mean": {"preprocess": {"mean": "image"}},
    # the default plus the `finish` synthetic defect (a region whose fine grain is changed: train/defects.py)
    "finish defects": {"train": {"defect_kinds": ["paste", "scar", "blob", "finish"]}},
    # bank-only: no training of its own (scored on every seed's default model with its bank rebuilt)
    "no code aggregation": {"bank": {"neighbourhood": 1}},
    "no image retrieval": {"bank": {"retrieve": 0}},
    "no level normalisation": {"bank": {"level_norm": 0.0}},
    # scoring-only: every seed's default model and bank, its image score over one patch's worth of pixels
    "top-patch image score": {"scoring": {"image_score": "top-patch"}},
}
ETAS = (1, 3, 5, 10, 20)
CORESETS = (0.1, 0.01)
WINDOWS = (2, 4)


def _slug(label: str) -> str:
    """An IMPROVEMENTS label as `--improvements` takes it and as its cache folder is named."""
    return label.replace(" ", "-")


def model_cache(work: Path, name: str, task: str, seed: int, label: str = "default") -> Path:
    """Where the quality benchmark caches the model of one set, task, seed and variant (the other benchmarks
    that score "the quality benchmark's models" look them up here rather than training their own)."""
    return work / name / f"{task}-seed{seed}-{_slug(label)}"


def _needs_no_training(variant: dict[str, Any]) -> bool:
    """Does the variant change only the memory bank or the scoring (so a trained model serves it without
    retraining)?"""
    return bool(variant) and set(variant) <= {"bank", "scoring"}


def report_stem(protocol: str, tag: str = "") -> str:
    """The name every file of a run carries (quality-<stem>.md, heatmaps-<stem>-<set>/, ...): the protocol, after
    the run's --label when it has one, so a side run (other tasks, one set) does not overwrite the main report."""
    return f"{tag}-{protocol}" if tag else protocol


def label_option(value: str) -> str:
    """--label: a file-name part, so lower-case letters, digits and inner dashes only."""
    if value and not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", value):
        raise typer.BadParameter(f"{value!r}: use lower-case letters, digits and single dashes (e.g. tasks-none)")
    return value


def models_dir(work: Path, protocol: str) -> Path:
    """Where a protocol's trained bundles are cached (cpu-full-bank shares the cpu protocol's)."""
    return work / PROTOCOLS[protocol].get("models", protocol)


def protocol_config(protocol: str, task: str, preset: str | None = None, seed: int = 0,
                    variant: dict[str, Any] | None = None) -> Config:
    """The protocol's budget for one pretext task and seed, on the protocol's preset or another one, with a
    variant's overrides (IMPROVEMENTS) on top."""
    p = PROTOCOLS[protocol]
    overrides = deep_merge({k: val for k, val in p.items() if k not in ("preset", "models")}, variant or {})
    # every step of the budget on any machine (no time budget), so that figures compare across machines and runs
    overrides["train"] = {"max_minutes": 0.0, **overrides["train"], "task": task, "seed": seed}
    return build_config(preset or p["preset"], overrides)


def same_training(trained: Config, training: dict[str, Any], cfg: Config) -> bool:
    """Would training with `cfg` give the bundle trained with `trained` (its manifest's `training`)? The
    configs must agree except perhaps in the early stop, and the asked-for stop, replayed on the bundle's
    recorded held-out curve, must end where the bundle ended: at the same step when it stopped early, never
    when it ran every step (the stop only observes). Replaying also catches a changed stop rule, which
    equal configs would not."""
    from sclvi.train.monitor import stop_step

    stop_keys = {"early_stop_patience": cfg.train.early_stop_patience, "early_stop_min_delta": cfg.train.early_stop_min_delta}
    if trained.model_copy(update={"train": trained.train.model_copy(update=stop_keys)}) != cfg:
        return False
    replayed = stop_step(training.get("evals", []), cfg.train.early_stop_patience, cfg.train.early_stop_min_delta)
    if training.get("stopped_early"):
        return replayed is not None and replayed == training.get("steps")
    return training.get("steps") == cfg.train.steps and replayed in (None, cfg.train.steps)


def _trained_bundle(cfg: Config, data: Path, work: Path):
    """Reuse a cached bundle that training with this config would give (same_training; its bank rebuilt when
    only the bank settings differ: the encoder does not depend on them), else train one (and its bank), going
    on from the checkpoint of an interrupted training with this config. Returns (bundle, training seconds over
    every run of it)."""
    from sclvi.dataset import read_dataset
    from sclvi.engines import load_backend
    from sclvi.memory_bank import rebuild_memory_bank
    from sclvi.train.make_bundle import train_and_bank
    from sclvi.train.trainer import resumable

    try:
        bundle = load_bundle(work)
        trained = bundle.config.model_copy(update={"bank": cfg.bank, "scoring": cfg.scoring})  # scored with cfg's
        if same_training(trained, bundle.manifest.get("training", {}), cfg) and bundle.has_bank():
            log.info("reusing %s", work)
            if bundle.config.bank != cfg.bank:
                log.info("rebuilding its memory bank (%s -> %s)", bundle.config.bank, cfg.bank)
                rebuild_memory_bank(bundle, load_backend(bundle, "torch"), read_dataset(data, need_test=False).train, cfg.bank)
            return bundle, _training_seconds(bundle)
    except SclviError:
        pass
    resume = resumable(work, cfg)
    if resume:
        log.info("going on from the checkpoint in %s", work)
    train_and_bank(cfg, data, work, resume=resume)
    bundle = load_bundle(work)
    return bundle, _training_seconds(bundle)


def _training_seconds(bundle: Any) -> float | None:
    training = bundle.manifest.get("training", {})
    return training.get("seconds", training.get("seconds_this_run"))  # bundles before resumable runs: one run


def train_and_score(cfg: Config, ds: Any, work: Path) -> tuple[Any, np.ndarray, np.ndarray, float, float, float | None]:
    """(bundle, image scores, maps, embed s / image, score s / image, train s) of the model `cfg` trains on `ds`
    (cached in `work`), scored with its own scoring config."""
    from sclvi.engines import load_backend
    from sclvi.evaluate import embed_test_set, score_test_set

    bundle, train_s = _trained_bundle(cfg, ds.root, work)
    codes, embed_s = embed_test_set(bundle, ds, load_backend(bundle))
    scores, maps, score_s = score_test_set(bundle, codes, cfg.scoring)
    return bundle, scores, maps, embed_s, score_s, train_s


def _variants(cfg: Config, task: str) -> list[tuple[str, dict[str, Any], float | None]]:
    """(label, scoring overrides, coreset ratio) to score for one trained model."""
    if task != "scl12":
        return [(f"{task}, eta 10", {}, None)]
    rows: list[tuple[str, dict[str, Any], float | None]] = [(f"scl12, eta {e}", {"eta": e}, None) for e in ETAS]
    rows.append(("scl12, eta 10, authors' formula", {"formula": "authors"}, None))
    rows += [(f"scl12, eta 10, coreset {r}", {}, r) for r in CORESETS]
    rows += [(f"scl12, eta 10, window +-{w} cells", {"position_window": w, "knn": "numba"}, None) for w in WINDOWS]
    return rows


def run_set(name: str, root: Path, protocol: str, work: Path, out: Path, tag: str = "") -> dict[str, Any]:
    from sclvi.dataset import read_dataset
    from sclvi.engines import load_backend
    from sclvi.evaluate import embed_test_set, metrics_report, score_test_set, test_masks, write_overlays
    from sclvi.memory_bank import coreset_keep
    from sclvi.metrics import roc
    from sclvi.plots import save_roc

    ds = read_dataset(root)
    stem = report_stem(protocol, tag)
    rows: list[dict[str, Any]] = []
    curves = {}
    labels = np.array([t.is_anomalous for t in ds.test])
    for task in TASKS:
        cfg = protocol_config(protocol, task)
        bundle, train_s = _trained_bundle(cfg, root, work / name / task)
        codes, embed_s = embed_test_set(bundle, ds, load_backend(bundle))
        masks = test_masks(ds, cfg.geometry)
        for label, scoring_over, ratio in _variants(cfg, task):
            scoring = cfg.scoring.model_copy(update=scoring_over)
            banks = None
            if ratio is not None:
                banks = {}
                for scale in ("small", "large"):
                    c, p, _ = bundle.bank_data(scale)
                    keep = coreset_keep(np.asarray(c), np.asarray(p), 0, None, ratio, cfg)  # whole bank
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
                write_overlays(out / f"heatmaps-{stem}-{name}", ds.test, maps, scores, cfg.geometry, 6, masks)
    save_roc(out / f"roc-{stem}-{name}.png", curves, f"{name}: image ROC by pretext task ({protocol} budget)")
    return {"set": name, "n_test": len(ds.test), "n_train": len(ds.train), "has_masks": ds.has_masks, "rows": rows}


def model_facts(bundle) -> dict[str, Any]:
    """What a row says about the trained model: held-out pretext accuracy and its code statistics."""
    t = bundle.manifest.get("training", {})
    pre = t.get("pretext", {})
    codes = t.get("codes", {})
    return {
        "steps": t.get("steps"),
        "stopped_early": t.get("stopped_early"),
        "pretext_acc": pre.get("heldout_acc"),
        "pretext_acc_train": _mean_of(pre.get("train_acc32"), pre.get("train_acc64")),
        "pretext_chance": pre.get("chance"),
        "code_rank32": codes.get("32", {}).get("effective_rank"),
        "code_rank64": codes.get("64", {}).get("effective_rank"),
    }


def _mean_of(*values: Any) -> float | None:
    ok = [v for v in values if v is not None]
    return float(np.mean(ok)) if ok else None


def quality_row(name: str, ds: Any, masks: np.ndarray | None, preset: str, kind: str, task: str | None,
                seed: int | None, scores: np.ndarray, maps: np.ndarray, embed_s: float, score_s: float,
                train_s: float | None, facts: dict[str, Any], variant: str | None = None) -> dict[str, Any]:
    """One report row: what was scored, its metrics (overall and per defect type) and timings."""
    from sclvi.evaluate import metrics_report

    m = metrics_report(ds, scores, maps, masks)
    for d, share in defect_pixel_shares(ds, masks).items():
        m["per_defect"][d]["pixel_share"] = share
    log.info("%s | %s %s %s seed %s: image AUROC %.3f", name, kind, variant or "", task or "", seed, m["image_auroc"])
    return {"set": name, "kind": kind, "variant": variant, "preset": None if kind == "floor: raw pixels" else preset,
            "task": task, "seed": seed, "train_s": train_s, "embed_ms": 1000 * embed_s, "score_ms": 1000 * score_s,
            **facts, **m}


def defect_pixel_shares(ds: Any, masks: np.ndarray | None) -> dict[str, float]:
    """Each defect type's part of all defect pixels of the test set: what the overall pixel AUROC is made of."""
    if masks is None or not masks.any():
        return {}
    defects = np.array([t.defect for t in ds.test])
    return {d: float(masks[defects == d].sum() / masks.sum()) for d in ds.defect_types}


def floor_rows(name: str, ds: Any, protocol: str, masks: np.ndarray | None, work: Path,
               progress: Any = None) -> list[dict[str, Any]]:
    """The two no-learning floors of this set at the protocol's geometry, bank, scoring and preset, each cached in
    work/<set>/floors.json under the settings it reads (the raw-pixel floor has no encoder and always subtracts
    the per-pixel mean image, so an encoder or `preprocess.mean` change leaves it cached); `progress(rows)` after
    each one."""
    from sclvi.benchmarks.common import untrained_bundle
    from sclvi.benchmarks.floors import raw_pixel_floor
    from sclvi.engines import load_backend
    from sclvi.evaluate import embed_test_set, score_test_set
    from sclvi.memory_bank import bank_images
    from sclvi.scorer import resolve_scoring

    base = protocol_config(protocol, "scl12")
    preset = PROTOCOLS[protocol]["preset"]
    cache = work / name / "floors.json"
    cached = json.loads(cache.read_text()).get("by_key", {}) if cache.is_file() else {}
    settings = base.model_dump(mode="json")
    keys = {
        "floor: raw pixels": json.dumps({"floor": "raw pixels", "photometric": settings["preprocess"]["photometric"],
                                         "bank": {k: settings["bank"][k] for k in ("max_images", "seed")},
                                         **{k: settings[k] for k in ("geometry", "scoring")}}),
        "floor: untrained encoder": json.dumps({"floor": "untrained encoder", **{
            k: settings[k] for k in ("preset", "encoder", "preprocess", "geometry", "bank", "scoring")}}),
    }
    chosen = bank_images(ds.train, base.bank.max_images, base.bank.seed)
    rows: list[dict[str, Any]] = []
    for kind, key in keys.items():
        if key in cached:
            log.info("%s: %s reused from %s", name, kind, cache)
            rows.append(cached[key])
            continue
        if kind == "floor: raw pixels":
            scores, maps, score_s = raw_pixel_floor(base, ds, chosen)
            row = quality_row(name, ds, masks, preset, kind, None, None, scores, maps, 0.0, score_s, None, {})
        else:
            bundle = untrained_bundle(work / name / "untrained", base, chosen)
            codes, embed_s = embed_test_set(bundle, ds, load_backend(bundle))
            scores, maps, score_s = score_test_set(bundle, codes, base.scoring)
            row = quality_row(name, ds, masks, preset, kind, None, 0, scores, maps, embed_s, score_s, None,
                              {"window": resolve_scoring(base.scoring, bundle).window})
        rows.append(row)
        cached[key] = row
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"by_key": cached}, default=str))
        if progress is not None:
            progress(list(rows))
    return rows


def run_quality(name: str, root: Path, protocol: str, tasks: list[str], seeds: list[int], work: Path,
                out: Path, improvements: list[str] | None = None, progress: Any = None,
                variant_seeds: int = 1, tag: str = "") -> list[dict[str, Any]]:
    """Floors, then every (task, seed) of the protocol's preset: one row each, eta 10; with `improvements`,
    also the IMPROVEMENTS variants picked (see below). `progress(rows)` after each row, so an
    interrupted run still leaves a report of what it measured."""
    from sclvi.dataset import read_dataset
    from sclvi.evaluate import test_masks, write_overlays
    from sclvi.scorer import resolve_scoring

    ds = read_dataset(root)
    stem = report_stem(protocol, tag)
    preset = PROTOCOLS[protocol]["preset"]
    masks = test_masks(ds, protocol_config(protocol, "scl12").geometry)
    rows = floor_rows(name, ds, protocol, masks, work, progress)
    runs = [("default", {}, task, seed) for task in tasks for seed in seeds]
    # `improvements`: the variants' slugs (IMPROVEMENTS labels with dashes), [] for all of them, None for none.
    # A variant that changes only the bank needs no training: every seed's model is scored; a training variant
    # trains the first `variant_seeds` seeds.
    picked = {} if improvements is None else {
        label: over for label, over in IMPROVEMENTS.items() if not improvements or _slug(label) in improvements}
    runs += [(label, over, tasks[0], seed) for label, over in picked.items()
             for seed in (seeds if _needs_no_training(over) else seeds[:variant_seeds])]
    for variant, over, task, seed in runs:
        cfg = protocol_config(protocol, task, seed=seed, variant=over)
        where, default = (model_cache(work, name, task, seed, label) for label in (variant, "default"))
        if _needs_no_training(over) and not where.exists() and default.is_dir():
            shutil.copytree(default, where)  # same model; its bank is rebuilt
        bundle, scores, maps, embed_s, score_s, train_s = train_and_score(cfg, ds, where)
        rows.append(quality_row(name, ds, masks, preset, "trained", task, seed, scores, maps, embed_s, score_s, train_s,
                                {**model_facts(bundle), "window": resolve_scoring(cfg.scoring, bundle).window,
                                 "photometric": cfg.preprocess.photometric, "mean": cfg.preprocess.mean, "defect_weight": cfg.train.defect_weight},
                                variant))
        if progress is not None:
            progress(rows)
        if seed == seeds[0] and task == tasks[0] and variant == "default":
            write_overlays(out / f"heatmaps-{stem}-{name}", ds.test, maps, scores, cfg.geometry, 6, masks)
            curve = bundle.path / "training_curve.png"
            if curve.is_file():
                (out / f"training-curve-{stem}-{name}.png").write_bytes(curve.read_bytes())
    return rows


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
        floor = max((r["image_auroc"] for r in mine if r["kind"].startswith("floor")), default=float("nan"))
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
        f"ideas that are not in the default (`finish defects`, `top-patch image score`: the image score the mean of the "
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
            lines.append(f"| {label} | {_pm(e, 'image_auroc')} | {_pm(e, 'pixel_auroc')} | {_pm(e, 'pixel_auroc_vs_good')} "
                         f"| {_pm(e, 'pro')} | {adds} "
                         f"| {_pm(e, 'pretext_acc', pct=False)} |")
        lines += ["", "Every row:", "", "| kind | variant | task | seed | image AUROC | pixel AUROC | PRO | pretext held-out / train "
                  "| code rank 32 / 64 px | window | steps | train s | embed ms | score ms |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["set"] == name):
            pre, rank, steps, train = model_cells(r)
            win = "-" if r.get("window") is None else f"+-{r['window']}"
            lines.append(f"| {r['kind']} | {r.get('variant') or '-'} | {r['task'] or '-'} | {'-' if r['seed'] is None else r['seed']} | {_pct(r['image_auroc'])} "
                         f"| {_pct(r.get('pixel_auroc'))} | {_pct(r.get('pro'))} | {pre} | {rank} "
                         f"| {win} | {steps} | {train} "
                         f"| {r['embed_ms']:.0f} | {r['score_ms']:.0f} |")
        lines += per_defect_table([r for r in rows if r["set"] == name])
        lines += ["", f"Heatmaps: `heatmaps-{stem}-{name}/`; training curve of the first model: "
                  f"`training-curve-{stem}-{name}.png`", ""]
    lines += ["## Machine", "", machine_table(info), ""]
    path = out / f"quality-{stem}.md"
    path.write_text("\n".join(lines))
    (out / f"quality-{stem}.json").write_text(json.dumps(
        {"machine": info, "protocol": budget, "rows": rows, "summary": summary}, indent=2, default=str))
    return path


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
        return " / ".join(_pct(_mean_of(*v)) for v in vals)

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


def _pm(entry: dict[str, Any], metric: str, pct: bool = True) -> str:
    v, sd = entry.get(metric), entry.get(f"{metric}_std")
    if v is None:
        return "-"
    scale = 100 if pct else 1
    fmt = ".1f" if pct else ".3f"
    return f"{scale * v:{fmt}}" + ("" if sd is None else f" ± {scale * sd:{fmt}}")


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
        m = metrics_report(ds, scores, maps, test_masks(ds, cfg.geometry))
        rows.append({"set": name, "preset": preset, "gmac_per_frame": frame_macs(cfg) / 1e9, "train_s": train_s,
                     "embed_ms": 1000 * embed_s, "score_ms": 1000 * score_s, **m})
        log.info("%s | %s: image AUROC %.3f", name, preset, m["image_auroc"])
    return rows


def write_families_report(rows: list[dict[str, Any]], protocol: str, out: Path, tag: str = "") -> Path:
    """Merge these rows into the protocol's families JSON (keyed by set and preset) and rewrite the report."""
    stem = report_stem(protocol, tag)
    store = out / f"quality-families-{stem}.json"
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
    path = out / f"quality-families-{stem}.md"
    path.write_text("\n".join(lines))
    store.write_text(json.dumps({"machine": info, "protocol": budget, "rows": rows}, indent=2, default=str))
    return path


def _pct(v: Any) -> str:
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
        lines += ["", f"ROC: `roc-{stem}-{res['set']}.png`; heatmaps: `heatmaps-{stem}-{res['set']}/`", ""]
    lines += ["## Machine", "", machine_table(info), ""]
    path = out / f"quality-ablation-{stem}.md"
    path.write_text("\n".join(lines))
    (out / f"quality-ablation-{stem}.json").write_text(json.dumps({"machine": info, "protocol": budget, "results": results}, indent=2, default=str))
    return path


def quality(
    data: Path = typer.Option(Path("../shared/data"), help="folder holding the data sets"),
    sets: list[str] = typer.Option(["mvtec_bottle", "magnetic_tile"], metavar="SET,...",
                                   help="data sets (a list option: comma-separated, or the flag repeated)"),
    protocol: Protocol = typer.Option("cpu", help="training and bank budget"),
    seeds: list[str] = typer.Option(["0", "1", "2"], metavar="SEED,...", help="training seeds per task"),
    tasks: list[str] = typer.Option(["scl12"], metavar="TASK,...", help="pretext tasks to train (the paper's ordering: none,jigsaw8,scl12)"),
    work: Path = typer.Option(Path("/tmp/sclvi-bench"), help="cache of trained bundles"),
    ablation: bool = typer.Option(False, help="the paper's ablations (eta sweep, formula, coresets, windows)"),
    families: Optional[list[str]] = typer.Option(None, metavar="PRESET,...", help="compare these encoder presets (scl12, eta 10) instead"),
    improvements: Optional[list[str]] = typer.Option(
        None, metavar="SLUG,...", help="also each departure from the paper alone (`all`, or the slugs named): a training change "
        "on the first task and --variant-seeds seeds, a bank- or scoring-only one (no-code-aggregation, no-image-retrieval, "
        "no-level-normalisation, top-patch-image-score) on every seed's model"),
    variant_seeds: int = typer.Option(1, metavar="N", help="how many of --seeds a training variant of --improvements trains "
                                      "(each costs a training run)"),
    steps: Optional[list[str]] = typer.Option(None, metavar="N,...", help="learning curve instead: one scl12 model per step "
                                              "budget (quality-steps-<protocol>.md)"),
    merge: Optional[Path] = typer.Option(
        None, metavar="REPORT.json", help="an earlier quality-<protocol>.json of the same protocol: its rows of the sets "
        "this run does not measure join the report, each set with the date it was measured (one report for sets "
        "trained in different sessions)"),
    label: str = typer.Option("", callback=label_option, help="a name for a side run's files: quality-<label>-<protocol>.md "
                              "/ .json, heatmaps-<label>-<protocol>-<set>/, training-curve-<label>-<protocol>-<set>.png (and "
                              "the --steps, --families, --ablation reports likewise), so the main report is not overwritten"),
    out: Path = OUT,
) -> Path:
    """Detection quality on real data next to the no-learning floors, with the paper's ablations."""
    start(out)
    protocol = protocol.value
    sets, seeds = listed(sets, option="--sets"), listed(seeds, int, option="--seeds")
    tasks = listed(tasks, choices=TASKS, option="--tasks")
    slugs = listed(improvements, choices=[*map(_slug, IMPROVEMENTS), "all"], option="--improvements")
    picked = None if improvements is None else [] if "all" in slugs else slugs  # []: every variant
    args = SimpleNamespace(data=data, sets=sets, protocol=protocol, seeds=seeds, tasks=tasks, work=work, ablation=ablation,
                           families=listed(families, option="--families"), improvements=picked,
                           variant_seeds=variant_seeds, steps=listed(steps, int, option="--steps"), out=out, tag=label)
    work = models_dir(args.work, args.protocol)
    if args.steps:
        from sclvi.benchmarks.learning_curve import run_curve, write_curve_report

        t0 = time.perf_counter()
        curve: list[dict[str, Any]] = []
        for name in args.sets:
            before = list(curve)
            curve += run_curve(name, args.data / name, args.protocol, args.steps, args.seeds, work,
                               lambda partial: write_curve_report(before + partial, args.protocol, args.out,
                                                                  time.perf_counter() - t0, args.tag))
            path = write_curve_report(curve, args.protocol, args.out, time.perf_counter() - t0, args.tag)
        print(f"report: {path}")
        return path
    if args.families:
        for name in args.sets:
            path = write_families_report(run_families(name, args.data / name, args.protocol, args.families, work),
                                         args.protocol, args.out, args.tag)
        print(f"report: {path}")
        return path
    t0 = time.perf_counter()
    if args.ablation:
        results = []
        for name in args.sets:
            results.append(run_set(name, args.data / name, args.protocol, work, args.out, args.tag))
            path = write_ablation_report(results, args.protocol, args.out, time.perf_counter() - t0, args.tag)  # partial reports as we go
        print(f"report: {path}")
        return path
    rows: list[dict[str, Any]] = kept_rows(merge, args.protocol, args.sets) if merge is not None else []
    for name in args.sets:
        done = list(rows)
        rows += run_quality(name, args.data / name, args.protocol, args.tasks, args.seeds, work, args.out, args.improvements,
                            lambda partial: write_quality_report(done + partial, args.protocol, args.out, time.perf_counter() - t0,
                                                                 args.tag),
                            args.variant_seeds, args.tag)
        path = write_quality_report(rows, args.protocol, args.out, time.perf_counter() - t0, args.tag)
    print(f"report: {path}")
    return path


app = benchmark_app(quality)


def main(argv: list[str] | None = None) -> Path:
    return invoke(app, argv)


if __name__ == "__main__":
    app()
