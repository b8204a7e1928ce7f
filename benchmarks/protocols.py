"""The quality benchmark's protocols (training and bank budgets), its variants and where their models and
reports go: shared by the quality benchmark, its learning curve, its report tables and the k-NN quality benchmark."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from sclvi.config import Config, build_config, deep_merge

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
    # the default plus the anti-collapse term (train/trainer.py spread_loss; at the default's codes it is 17-27,
    # so 0.1 puts it level with the pretext cross-entropy and 1.0 makes it dominate)
    "anti-collapse 0.1": {"train": {"spread_weight": 0.1}},
    "anti-collapse 1.0": {"train": {"spread_weight": 1.0}},
    # the synthetic-defect term's weight (1.0 in the default) halved and doubled
    "defect weight 0.5": {"train": {"defect_weight": 0.5}},
    "defect weight 2.0": {"train": {"defect_weight": 2.0}},
    # bank-only: no training of its own (scored on every seed's default model with its bank rebuilt)
    "no code aggregation": {"bank": {"neighbourhood": 1}},
    "no image retrieval": {"bank": {"retrieve": 0}},
    "no level normalisation": {"bank": {"level_norm": 0.0}},
    # scoring-only: every seed's default model and bank, its image score over one patch's worth of pixels
    "top-patch image score": {"scoring": {"image_score": "top-patch"}},
}


def variant_slug(label: str) -> str:
    """An IMPROVEMENTS label as `--improvements` takes it and as its cache folder is named."""
    return label.replace(" ", "-")


def model_cache(work: Path, name: str, task: str, seed: int, label: str = "default") -> Path:
    """Where the quality benchmark caches the model of one set, task, seed and variant (the other benchmarks
    that score "the quality benchmark's models" look them up here rather than training their own)."""
    return work / name / f"{task}-seed{seed}-{variant_slug(label)}"


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
