"""What the fast k-NN modes cost in detection quality: exact search vs coresets, on the trained models.

    sclvi bench knn-quality [--sets mvtec_bottle magnetic_tile] [--seeds 0 1 2]

For each shared set and seed, the quality benchmark's trained model (trained here if its cached bundle is
missing) is scored with exact search and with smaller banks: per grid cell coresets when the bank is
aligned (the position window is on), a global greedy coreset otherwise. Rows: image / pixel AUROC and
k-NN + maps time per test image at the protocol's geometry, mean +- std over seeds, and the change
against exact search. The line-rate figures of the same modes at 256 px / stride 4 are in
`sclvi bench latency --knn-modes`. Writes quality-knn-modes-<protocol>.md / .json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from sclvi.benchmarks.common import machine, machine_table, parse_args
from sclvi.benchmarks.quality import PROTOCOLS, _trained_bundle, model_cache, models_dir, protocol_config

ALIGNED_RATIOS = (1.0, 0.5, 0.25, 0.1)  # per cell: every window keeps its share
GLOBAL_RATIOS = (1.0, 0.05, 0.01)  # whole-bank greedy k-center
#: Unaligned sets also get the approximate index on the whole bank (scoring.knn faiss-ivf).
IVF = "faiss-ivf"


def reduced_banks(bundle: Any, window: int | None, ratio: float) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    from sclvi.geometry import TwoScaleGeometry
    from sclvi.memory_bank import coreset_keep

    if ratio >= 1:
        return None
    geometry = TwoScaleGeometry.from_config(bundle.config.geometry)
    grids = {"small": geometry.small.shape, "large": geometry.large.shape}
    banks = {}
    for scale, n in grids.items():
        codes, positions, _ = bundle.bank_data(scale)
        codes, positions = np.asarray(codes), np.asarray(positions)
        keep = coreset_keep(codes, positions, n, window, ratio, bundle.config)
        banks[scale] = (codes[keep], positions[keep])
    return banks


def run_set(name: str, root: Path, protocol: str, seeds: list[int], work: Path) -> list[dict[str, Any]]:
    from sclvi.dataset import read_dataset
    from sclvi.engines import load_backend
    from sclvi.evaluate import embed_test_set, metrics_report, score_test_set, test_masks
    from sclvi.scorer import resolve_scoring

    ds = read_dataset(root)
    rows = []
    for seed in seeds:
        cfg = protocol_config(protocol, "scl12", seed=seed)
        bundle, _ = _trained_bundle(cfg, root, model_cache(work, name, "scl12", seed))
        codes, _ = embed_test_set(bundle, ds, load_backend(bundle))
        masks = test_masks(ds, cfg.geometry)
        scoring = resolve_scoring(cfg.scoring.model_copy(update={"knn": "numba"}), bundle)
        modes = [(r, "numba") for r in (ALIGNED_RATIOS if scoring.window is not None else GLOBAL_RATIOS)]
        if scoring.window is None:
            modes.append((1.0, IVF))
        for ratio, kernel in modes:
            banks = reduced_banks(bundle, scoring.window, ratio)
            scores, maps, score_s = score_test_set(bundle, codes, scoring.model_copy(update={"knn": kernel}), banks)
            m = metrics_report(ds, scores, maps, masks)
            n_codes = sum(len(b[0]) for b in banks.values()) if banks else sum(
                bundle.manifest["banks"][s]["count"] for s in ("small", "large"))
            rows.append({"set": name, "seed": seed, "window": scoring.window, "coreset": ratio, "kernel": kernel,
                         "bank_codes": n_codes,
                         "image_auroc": m["image_auroc"], "pixel_auroc": m.get("pixel_auroc"),
                         "score_ms_per_image": 1000 * score_s})  # score_test_set gives seconds per image
            print(f"{name} seed {seed} {kernel} window {scoring.window} coreset {ratio:g}: image AUROC {m['image_auroc']:.4f}",
                  flush=True)
    return rows


def _mean_std(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return f"{100 * np.mean(vals):.1f} +- {100 * np.std(vals):.1f}" if len(vals) > 1 else f"{100 * vals[0]:.1f}"


def write_report(rows: list[dict[str, Any]], protocol: str, out: Path, seconds: float) -> Path:
    info = machine()
    lines = [
        f"# k-NN modes vs exact search: detection quality ({protocol} protocol)",
        "",
        f"The quality benchmark's trained scl12 models ({PROTOCOLS[protocol]['preset']}, geometry "
        f"{PROTOCOLS[protocol]['geometry']}), scored with exact search and with coresets (per grid cell when the "
        "bank is aligned and the position window is on; global greedy k-center otherwise), and on unaligned sets with "
        "faiss IVF-Flat candidates + exact re-rank on the whole bank. Mean +- std over seeds; "
        f"`vs exact` = change of the mean image AUROC in points. Wall time {seconds / 60:.0f} min.",
        "",
        "| set | k-NN | window | coreset | bank codes | image AUROC | vs exact | pixel AUROC | k-NN + maps ms / image |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == name]
        exact = np.mean([r["image_auroc"] for r in mine if r["coreset"] == 1.0 and r["kernel"] == "numba"])
        for ratio, kernel in dict.fromkeys((r["coreset"], r["kernel"]) for r in mine):
            g = [r for r in mine if (r["coreset"], r["kernel"]) == (ratio, kernel)]
            window = "none" if g[0]["window"] is None else f"+-{g[0]['window']}"
            delta = 100 * (np.mean([r["image_auroc"] for r in g]) - exact)
            lines.append(f"| {name} | {kernel} | {window} | {ratio:g} | {int(np.mean([r['bank_codes'] for r in g])):,} | "
                         f"{_mean_std([r['image_auroc'] for r in g])} | {delta:+.2f} | "
                         f"{_mean_std([r['pixel_auroc'] for r in g])} | "
                         f"{np.mean([r['score_ms_per_image'] for r in g]):.1f} |")
    lines += ["", "## Machine", "", machine_table(info), ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"quality-knn-modes-{protocol}.md"
    path.write_text("\n".join(lines))
    (out / f"quality-knn-modes-{protocol}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return path


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["mvtec_bottle", "magnetic_tile"])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder holding the data sets")
    ap.add_argument("--protocol", default="cpu", choices=sorted(PROTOCOLS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/sclvi-bench"), help="the quality benchmark's bundle cache")
    args = parse_args(ap, argv)
    t0 = time.perf_counter()
    rows = []
    for name in args.sets:
        rows += run_set(name, args.data / name, args.protocol, args.seeds, models_dir(args.work, args.protocol))
    path = write_report(rows, args.protocol, args.out, time.perf_counter() - t0)
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    main()
