"""Detection quality on real data, always next to the no-learning floors, over several seeds.

    sclvi bench quality [--data ../shared/data] [--protocol cpu|quick|gpu] [--sets A,B] [--seeds 0,1,2]
                        [--tasks scl12,jigsaw8,none]

Per data set, rows of one table (quality-<protocol>.md / .json): the raw-pixel floor and the untrained
encoder (core/floors.py), then the protocol's preset trained with each pretext task and seed, at
the product's default training unless the protocol says otherwise, with each model's held-out pretext
accuracy and code statistics. Bundles are cached in --work, so an interrupted run resumes (one stopped
mid-training goes on from its last checkpoint).

    sclvi bench quality --ablation        the paper's ablations on one trained model per task: the eta
                                          sweep, the authors' formula, coresets and position windows
    sclvi bench quality --families P,...  the encoder presets side by side (scl12, eta 10, --seeds each), next to
                                          the floors
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
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import typer

from sclvi.benchmarks.common import OUT, benchmark_app, invoke, listed, start
from sclvi.benchmarks.protocols import (IMPROVEMENTS, PROTOCOLS, TASKS, Protocol, label_option, model_cache, models_dir,
                                        protocol_config, report_stem, variant_slug)
from sclvi.benchmarks.quality_report import (kept_rows, mean_of, write_ablation_report, write_families_report,
                                             write_quality_report)
from sclvi.bundle import load_bundle
from sclvi.config import Config
from sclvi.errors import SclviError

log = logging.getLogger(__name__)
ETAS = (1, 3, 5, 10, 20)
CORESETS = (0.1, 0.01)
WINDOWS = (2, 4)

def _needs_no_training(variant: dict[str, Any]) -> bool:
    """Does the variant change only the memory bank or the scoring (so a trained model serves it without
    retraining)?"""
    return bool(variant) and set(variant) <= {"bank", "scoring"}

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
        "pretext_acc_train": mean_of(pre.get("train_acc32"), pre.get("train_acc64")),
        "pretext_chance": pre.get("chance"),
        "code_rank32": codes.get("32", {}).get("effective_rank"),
        "code_rank64": codes.get("64", {}).get("effective_rank"),
    }


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
    from sclvi.floors import raw_pixel_floor
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
        label: over for label, over in IMPROVEMENTS.items() if not improvements or variant_slug(label) in improvements}
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

def run_families(name: str, root: Path, protocol: str, presets: list[str], seeds: list[int], work: Path,
                 progress: Any = None) -> list[dict[str, Any]]:
    """The floors, then one row per encoder preset and seed: the paper's task at the protocol's budget, eta 10,
    with each model's pretext accuracy (so a preset is judged by what learning adds, as the main table does).
    The protocol's own preset shares the main table's cached models; `progress(rows)` after each row."""
    from sclvi.benchmarks.encoders import frame_macs
    from sclvi.dataset import read_dataset
    from sclvi.evaluate import test_masks

    ds = read_dataset(root)
    masks = test_masks(ds, protocol_config(protocol, "scl12").geometry)
    rows = floor_rows(name, ds, protocol, masks, work, progress)
    for preset in presets:
        for seed in seeds:
            cfg = protocol_config(protocol, "scl12", preset, seed=seed)
            own = preset == PROTOCOLS[protocol]["preset"]
            where = model_cache(work, name, "scl12", seed, "default" if own else f"preset {preset}")
            bundle, scores, maps, embed_s, score_s, train_s = train_and_score(cfg, ds, where)
            rows.append(quality_row(name, ds, masks, preset, "trained", "scl12", seed, scores, maps, embed_s, score_s,
                                    train_s, {**model_facts(bundle), "gmac_per_frame": frame_macs(cfg) / 1e9}, preset))
            if progress is not None:
                progress(rows)
    return rows

def quality(
    data: Path = typer.Option(Path("../shared/data"), help="folder holding the data sets"),
    sets: list[str] = typer.Option(["mvtec_bottle", "magnetic_tile"], metavar="SET,...",
                                   help="data sets (a list option: comma-separated, or the flag repeated)"),
    protocol: Protocol = typer.Option("cpu", help="training and bank budget"),
    seeds: list[str] = typer.Option(["0", "1", "2"], metavar="SEED,...", help="training seeds per task"),
    tasks: list[str] = typer.Option(["scl12"], metavar="TASK,...", help="pretext tasks to train (the paper's ordering: none,jigsaw8,scl12)"),
    work: Path = typer.Option(Path("/tmp/sclvi-bench"), help="cache of trained bundles"),
    ablation: bool = typer.Option(False, help="the paper's ablations (eta sweep, formula, coresets, windows)"),
    families: Optional[list[str]] = typer.Option(None, metavar="PRESET,...", help="compare these encoder presets instead (scl12, eta 10, --seeds each, next to the floors)"),
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
    slugs = listed(improvements, choices=[*map(variant_slug, IMPROVEMENTS), "all"], option="--improvements")
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
            path = write_families_report(run_families(name, args.data / name, args.protocol, args.families, args.seeds, work,
                                                      lambda rows: write_families_report(rows, args.protocol, args.out, args.tag)),
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
