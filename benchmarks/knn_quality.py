"""What the fast k-NN modes cost in detection quality: exact search vs coresets, on the trained models.

    sclvi bench knn-quality [--sets mvtec_bottle,magnetic_tile] [--seeds 0,1,2]

For each shared set and seed, the quality benchmark's trained model (trained here if its cached bundle is
missing) is scored with exact search and with smaller banks: per grid cell coresets when the bank is
aligned (the position window is on), a global greedy coreset otherwise; aligned sets also with fewer bank
images retrieved per test image (bank.retrieve), unaligned ones with faiss IVF. Rows: image / pixel AUROC and
k-NN + maps time per test image at the protocol's geometry, mean +- std over seeds, and the change
against exact search. `--small-stride 4` scores the same models at the line's geometry (a bank rebuilt at
that stride in a cached copy: the encoders do not depend on the stride), where the k-NN time per image is
the line's. The line-rate figures of the same modes are in `sclvi bench latency --knn-modes`. Writes
quality-knn-modes-<protocol>[-stride<s>].md / .json (a run of some `--sets` keeps the report's other sets).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np

import typer

from sclvi.benchmarks.common import OUT, benchmark_app, invoke, listed, machine, save_report, start
from sclvi.benchmarks.protocols import PROTOCOLS, Protocol, model_cache, models_dir, protocol_config
from sclvi.benchmarks.quality import _trained_bundle

ALIGNED_RATIOS = (1.0, 0.5, 0.25, 0.1)  # per cell: every window keeps its share
GLOBAL_RATIOS = (1.0, 0.05, 0.01)  # whole-bank greedy k-center
#: Unaligned sets also get the approximate index on the whole bank (scoring.knn faiss-ivf), at the default
#: probe count and a quarter of it.
IVF = "faiss-ivf"
IVF_NPROBES = (8, 4, 2)
#: Aligned sets also get exact search among fewer retrieved bank images per test image (bank.retrieve = K): with
#: a position window each query already sees only its own place, and the k-NN time is proportional to K.
ALIGNED_RETRIEVE = (25, 10)


def at_stride(bundle: Any, data: Path, stride: int) -> Any:
    """The same trained model with its memory bank at another 32-px patch stride, in a cached copy next to it
    (`<model>-stride<s>`; built in a temporary folder and renamed, so an interrupted run leaves no half bank)."""
    import shutil

    from sclvi.bundle import load_bundle, set_bank_config
    from sclvi.dataset import read_dataset
    from sclvi.engines import load_backend
    from sclvi.errors import SclviError
    from sclvi.memory_bank import build_memory_bank

    geometry = bundle.config.geometry.model_copy(update={"small_stride": stride})
    if geometry == bundle.config.geometry:
        return bundle
    where = bundle.path.with_name(f"{bundle.path.name}-stride{stride}")
    try:
        cached = load_bundle(where)
        if cached.config == bundle.config.model_copy(update={"geometry": geometry}) and cached.has_bank() and \
                cached.manifest["files"]["encoder.safetensors"] == bundle.manifest["files"]["encoder.safetensors"]:
            return cached
    except (SclviError, KeyError):
        pass
    tmp = where.with_name(where.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle.path, tmp)
    copy = load_bundle(tmp)
    copy.config = copy.config.model_copy(update={"geometry": geometry})  # what build_memory_bank follows
    build_memory_bank(copy, load_backend(copy), read_dataset(data, need_test=False).train)
    set_bank_config(copy, copy.config.bank, geometry)
    shutil.rmtree(where, ignore_errors=True)
    tmp.rename(where)
    return load_bundle(where)


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


def run_set(name: str, root: Path, protocol: str, seeds: list[int], work: Path,
            stride: int | None = None) -> list[dict[str, Any]]:
    from sclvi.dataset import read_dataset
    from sclvi.engines import load_backend
    from sclvi.evaluate import embed_test_set, metrics_report, score_test_set, test_masks
    from sclvi.scorer import AnomalyScorer, resolve_scoring

    ds = read_dataset(root)
    rows = []
    for seed in seeds:
        cfg = protocol_config(protocol, "scl12", seed=seed)
        bundle, _ = _trained_bundle(cfg, root, model_cache(work, name, "scl12", seed))
        if stride is not None:
            bundle = at_stride(bundle, root, stride)
        codes, _ = embed_test_set(bundle, ds, load_backend(bundle))
        masks = test_masks(ds, bundle.config.geometry)
        scoring = resolve_scoring(cfg.scoring.model_copy(update={"knn": "numba"}), bundle)
        # (coreset ratio, kernel, nprobe, K): K = images retrieved per test image, None = the bundle's setting
        modes = [(r, "numba", None, None) for r in (ALIGNED_RATIOS if scoring.window is not None else GLOBAL_RATIOS)]
        if scoring.window is None:
            modes += [(1.0, IVF, nprobe, None) for nprobe in IVF_NPROBES]
        else:
            modes += [(1.0, "numba", None, k) for k in ALIGNED_RETRIEVE]
        for ratio, kernel, nprobe, k_images in modes:
            banks = reduced_banks(bundle, scoring.window, ratio)
            over = {"knn": kernel, **({"ivf_nprobe": nprobe} if nprobe else {})}
            scored = bundle if k_images is None else dataclasses.replace(bundle, config=bundle.config.model_copy(
                update={"bank": bundle.config.bank.model_copy(update={"retrieve": k_images})}))
            scores, maps, score_s = score_test_set(scored, codes, scoring.model_copy(update=over), banks)
            # decided from the banks alone: no k-NN kernel is built to ask it
            retrieve = AnomalyScorer(scored, None, scoring, banks=banks).retrieved_images
            m = metrics_report(ds, scores, maps, masks)
            n_codes = sum(len(b[0]) for b in banks.values()) if banks else sum(
                bundle.manifest["banks"][s]["count"] for s in ("small", "large"))
            rows.append({"set": name, "seed": seed, "window": scoring.window, "coreset": ratio, "kernel": kernel,
                         "nprobe": nprobe, "retrieve": retrieve, "retrieve_set": k_images, "bank_codes": n_codes,
                         "small_stride": bundle.config.geometry.small_stride,
                         "image_auroc": m["image_auroc"], "pixel_auroc": m.get("pixel_auroc"),
                         "score_ms_per_image": 1000 * score_s})  # score_test_set gives seconds per image
            print(f"{name} seed {seed} {_kernel(kernel, nprobe)} window {scoring.window} coreset {ratio:g} retrieval "
                  f"{retrieve}: image AUROC "
                  f"{m['image_auroc']:.4f}, {1000 * score_s:.0f} ms / image", flush=True)
    return rows


def _mode(row: dict[str, Any]) -> tuple[Any, ...]:
    """What one report line groups over seeds: coreset ratio, kernel, nprobe and the retrieval K asked for."""
    return row["coreset"], row["kernel"], row.get("nprobe"), row.get("retrieve_set")


def _kernel(kernel: str, nprobe: int | None) -> str:
    return kernel if nprobe is None else f"{kernel}, nprobe {nprobe}"


def _mean_std(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return f"{100 * np.mean(vals):.1f} +- {100 * np.std(vals):.1f}" if len(vals) > 1 else f"{100 * vals[0]:.1f}"


def _stem(protocol: str, stride: int | None) -> str:
    return f"quality-knn-modes-{protocol}{f'-stride{stride}' if stride else ''}"


def write_report(rows: list[dict[str, Any]], protocol: str, out: Path, seconds: float, stride: int | None = None) -> Path:
    info = machine()
    geometry = {**PROTOCOLS[protocol]["geometry"], **({"small_stride": stride} if stride else {})}
    lines = [
        f"# k-NN modes vs exact search: detection quality ({protocol} protocol{f', stride {stride}' if stride else ''})",
        "",
        f"The quality benchmark's trained scl12 models ({PROTOCOLS[protocol]['preset']}, geometry {geometry}"
        f"{' (banks rebuilt at that stride)' if stride else ''}), scored with exact search and with coresets (per grid "
        "cell when the bank is aligned and the position window is on; global greedy k-center otherwise), and on "
        "unaligned sets with faiss IVF-Flat candidates + exact re-rank. `retrieval`: each test image searched among "
        "its K nearest bank images (the default; a coreset holds no whole images, so it searches all of its codes). "
        "Mean +- std over seeds; `vs exact` = change of the mean image AUROC in points against the first row "
        f"(exact search, default retrieval). Wall time {seconds / 60:.0f} min on the machine below (for the sets of "
        "the last run: a run of some sets keeps the others' rows).",
        "",
        "| set | k-NN | window | coreset | retrieval | bank codes | image AUROC | vs exact | pixel AUROC | vs exact | "
        "k-NN + maps ms / image |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == name]
        exact = [r for r in mine if r["coreset"] == 1.0 and r["kernel"] == "numba" and r.get("retrieve_set") is None]
        for mode in dict.fromkeys(_mode(r) for r in mine):
            g = [r for r in mine if _mode(r) == mode]
            ratio, kernel, nprobe, _ = mode
            window = "none" if g[0]["window"] is None else f"+-{g[0]['window']}"
            deltas = []
            for key in ("image_auroc", "pixel_auroc"):
                if g[0].get(key) is None:
                    deltas.append("-")
                    continue
                deltas.append(f"{100 * (np.mean([r[key] for r in g]) - np.mean([r[key] for r in exact])):+.2f}")
            k = g[0].get("retrieve")
            lines.append(f"| {name} | {_kernel(kernel, nprobe)} | {window} | {ratio:g} | {f'{k} images' if k else 'off'} | "
                         f"{int(np.mean([r['bank_codes'] for r in g])):,} | "
                         f"{_mean_std([r['image_auroc'] for r in g])} | {deltas[0]} | "
                         f"{_mean_std([r['pixel_auroc'] for r in g])} | {deltas[1]} | "
                         f"{np.mean([r['score_ms_per_image'] for r in g]):.1f} |")
    return save_report(out, _stem(protocol, stride), lines, info, {"rows": rows})


def knn_quality(
    sets: list[str] = typer.Option(["mvtec_bottle", "magnetic_tile"], metavar="SET,...", help="data sets"),
    data: Path = typer.Option(Path("../shared/data"), help="folder holding the data sets"),
    protocol: Protocol = typer.Option("cpu", help="the quality benchmark's protocol"),
    seeds: list[str] = typer.Option(["0", "1", "2"], metavar="SEED,...", help="the models' training seeds"),
    work: Path = typer.Option(Path("/tmp/sclvi-bench"), help="the quality benchmark's bundle cache"),
    small_stride: Optional[int] = typer.Option(
        None, help="score the models with banks rebuilt at this 32-px patch stride (the line's: 4)"),
    out: Path = OUT,
) -> Path:
    """Detection quality of each k-NN mode (coresets, IVF) against exact search on the trained models."""
    args = SimpleNamespace(sets=listed(sets, option="--sets"), data=data,
                           protocol=protocol.value,
                           seeds=listed(seeds, int, option="--seeds"), work=work, small_stride=small_stride, out=start(out))
    # a run of some sets keeps the report's rows of the others (one set can be re-run alone)
    previous = args.out / f"{_stem(args.protocol, args.small_stride)}.json"
    earlier = json.loads(previous.read_text())["rows"] if previous.exists() else []
    kept = [r for r in earlier if r["set"] not in args.sets]
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in args.sets:
        rows += run_set(name, args.data / name, args.protocol, args.seeds, models_dir(args.work, args.protocol),
                        args.small_stride)
        path = write_report(rows + kept, args.protocol, args.out, time.perf_counter() - t0, args.small_stride)  # as it goes
    print(f"report: {path}")
    return path


app = benchmark_app(knn_quality)


def main(argv: list[str] | None = None) -> Path:
    return invoke(app, argv)


if __name__ == "__main__":
    app()
