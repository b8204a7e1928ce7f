"""Per-stage latency and throughput of the line, per backend and preset, against the Patch SVDD peer.

    sclvi bench latency [--presets lite,dense-lite] [--backends auto] [--frames 30]
    sclvi bench latency --presets dense-lite --geometries 256,1024x1024,2448x2048@0.5,2448x2048   # native rois

For each preset and each encoder backend usable here:
  * compute: the in-process per-frame cost of our path (one main-encoder call on all 32-px patches, one
    secondary call on their gathered 2x2 grids, the fused k-NN + affinity kernel, maps);
  * latency: the real runtime (acquisition, shared-memory ring, inference worker, publisher, ZeroMQ to a
    PLC stand-in that acknowledges) on a folder source paced at `--load` of the measured capacity;
    per stage p50/p95/p99, warm-up frames excluded;
  * throughput: the same runtime with the source free-running and a ring deep enough to hold every frame:
    verdicts per second in steady state.
The peer, timed in the same run: Patch SVDD's reference inference as its paper describes it, on our own
model: a per-patch dataset and data loader feeding the encoder in mini-batches, the 64-px patches
embedded from pixels (their four quarters through the main encoder again), then plain nearest-neighbour
search (eta = 1, exact) on the full bank. The ratio shows what one-call batching, the shared main encoder
and the fused kernel buy. Weights are random: the encoders' and exact search's timing does not depend on them.
`--bundle B --data D` times a trained bundle on its data set's test images instead: what an approximate index
(faiss-ivf, whose cost follows how the codes cluster) and image retrieval cost on real codes.
Geometries: `256` squashes every frame to 256x256 (the paper's protocol); `WxH[@SCALE]` replays native W x H
camera frames and inspects the largest centred roi whose size at SCALE both patch grids tile (the whole frame
when it tiles; the worker cuts and scales it: `preprocess`).
Writes latency-<cpu|gpu>.md / .json and a latency histogram PNG.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import typer

from sclvi.benchmarks.common import OUT, benchmark_app, invoke, listed, machine, save_report, start
from sclvi.benchmarks.line import (bench_config, percentiles, prepare_bundle, prepare_trained, run_line, stage_samples,
                                   stage_table)

log = logging.getLogger(__name__)

COMPUTE_STAGES = ("preprocess", "embed", "knn", "fuse")


#: Largest model input (pixels) the peer is timed on: its per-patch data loader takes minutes per frame above.
PEER_MAX_PIXELS = 512 * 512


def _frames(replay: Path, n: int) -> list[np.ndarray]:
    """Camera frames as the replay folder holds them (the runtime's source reads the same files)."""
    from sclvi.images import read_rgb

    files = sorted(replay.iterdir())
    return [read_rgb(files[i % len(files)], None) for i in range(n)]


def time_ours(bundle: Any, backend: Any, frames: list[np.ndarray], warmup: int) -> dict[str, np.ndarray]:
    """In-process ms per stage of our per-frame path (what an inference worker does, minus the ring):
    preprocess = roi cut + scale + normalisation."""
    from sclvi.images import check_frame
    from sclvi.scorer import AnomalyScorer

    scorer = AnomalyScorer(bundle, backend)
    out: dict[str, list[float]] = {s: [] for s in (*COMPUTE_STAGES, "frame")}
    for i, f in enumerate(frames):
        lat: dict[str, float] = {}
        t0 = time.perf_counter()
        x = bundle.normalise(check_frame(scorer.mapping.to_input(f), scorer.input_hw))[None]
        t1 = time.perf_counter()
        codes = scorer.embedder.embed(x)
        t2 = time.perf_counter()
        scorer.score_codes(codes.small[0], codes.large[0], lat)
        t3 = time.perf_counter()
        if i < warmup:
            continue
        out["preprocess"].append(1000 * (t1 - t0))
        out["embed"].append(1000 * (t2 - t1))
        out["knn"].append(lat["knn"])
        out["fuse"].append(lat["fuse"])
        out["frame"].append(1000 * (t3 - t0))
    return {k: np.asarray(v) for k, v in out.items()}


def time_peer(bundle: Any, frames: list[np.ndarray], warmup: int, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Patch SVDD's reference inference on our model (see the module docstring), in ms per stage."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from sclvi.geometry import TwoScaleGeometry
    from sclvi.knn import make_patch_scorer
    from sclvi.maps import fuse_maps, pixel_map
    from sclvi.model import build_model, load_numpy_state

    class PatchDataset(Dataset):
        """One patch per item, cut and copied out of the image, as Patch SVDD's PatchDataset_NCHW."""

        def __init__(self, image: np.ndarray, size: int, stride: int) -> None:
            self.image, self.size = image, size
            rows, cols = ((n - size) // stride + 1 for n in image.shape[-2:])
            self.offsets = [(r * stride, c * stride) for r in range(rows) for c in range(cols)]

        def __len__(self) -> int:
            return len(self.offsets)

        def __getitem__(self, i: int) -> torch.Tensor:
            r, c = self.offsets[i]
            return torch.from_numpy(np.ascontiguousarray(self.image[:, r : r + self.size, c : c + self.size]))

    cfg = bundle.config
    model = build_model(cfg.encoder)
    load_numpy_state(model, bundle.weights)
    model.eval()
    g = TwoScaleGeometry.from_config(cfg.geometry)
    plain_nn = cfg.scoring.model_copy(update={"eta": 1, "knn": "numpy", "position_window": None})
    nn = {s: make_patch_scorer(*bundle.bank_data(s)[:2], grid.shape, plain_nn)
          for s, grid in (("small", g.small), ("large", g.large))}
    embed_fn = {"small": model.embed_small, "large": model.embed_large}
    out: dict[str, list[float]] = {"embed": [], "knn": [], "fuse": [], "frame": []}
    for i, f in enumerate(frames):
        t0 = time.perf_counter()
        x = bundle.normalise(f)
        codes = {}
        with torch.inference_mode():
            for scale, grid in (("small", g.small), ("large", g.large)):
                loader = DataLoader(PatchDataset(x, grid.patch, grid.stride), batch_size=batch_size, shuffle=False)
                codes[scale] = torch.cat([embed_fn[scale](b) for b in loader]).numpy()
        t1 = time.perf_counter()
        scores = {s: nn[s].score(codes[s]) for s in codes}
        t2 = time.perf_counter()
        maps = {s: pixel_map(grid, scores[s].reshape(grid.shape)) for s, grid in (("small", g.small), ("large", g.large))}
        fuse_maps(maps["small"], maps["large"], cfg.scoring.scale_fusion).max()
        t3 = time.perf_counter()
        if i < warmup:
            continue
        out["embed"].append(1000 * (t1 - t0))
        out["knn"].append(1000 * (t2 - t1))
        out["fuse"].append(1000 * (t3 - t2))
        out["frame"].append(1000 * (t3 - t0))
    return {k: np.asarray(v) for k, v in out.items()}


def bench_one(preset: str, mode: str, geometry: str, args: SimpleNamespace, work: Path) -> list[dict[str, Any]]:
    """One preset at one k-NN mode ("WINDOW/CORESET[/KERNEL[/K]]", e.g. auto/1.0, 2/0.1, none/1.0/faiss-ivf,
    2/1.0/auto/10 = each frame searched among its 10 nearest bank images) and one geometry (`256`, `1024x1024`,
    `2448x2048@0.5`)."""
    from sclvi.bundle import load_bundle
    from sclvi.engines import available_backends, load_backend
    from sclvi.scorer import AnomalyScorer, planned_kernels, resolve_scoring

    parts = mode.split("/")
    window, coreset, knn = parts[0], (parts[1:2] or ["1.0"])[0], (parts[2:3] or ["auto"])[0]
    k_images = int(parts[3]) if len(parts) > 3 else None
    tag = f"{preset}-{mode.replace('/', '_')}-{geometry.replace('@', '_')}"
    if args.bundle is not None:
        if float(coreset) != 1.0:
            raise ValueError(f"k-NN mode {mode}: a trained --bundle is timed with its own bank (coreset 1.0)")
        scoring = bench_config(preset, 256, args.small_stride, window, 1.0, knn).scoring
        bundle_dir, replay = prepare_trained(work / tag, args.bundle, args.data, {
            "position_window": scoring.position_window, "knn": scoring.knn}, args.replay_images, k_images)
        bundle = load_bundle(bundle_dir)
        cfg = bundle.config
    else:
        cfg = bench_config(preset, geometry, args.small_stride, window, float(coreset), knn, k_images)
        bundle_dir, replay = prepare_bundle(work / tag, cfg, args.train_images, args.replay_images)
        bundle = load_bundle(bundle_dir)
    log.info("%s / %s: %s", preset, mode, cfg.geometry.describe())
    frames = _frames(replay, args.warmup + args.compute_frames)
    in_h, in_w = cfg.geometry.input_hw
    backends = available_backends(bundle) if args.backends == ["auto"] else args.backends
    retrieve = AnomalyScorer(bundle, None).retrieved_images  # the bundle's, whatever the backend: builds no kernel
    planned = planned_kernels(bundle)
    kernels = " / ".join(dict.fromkeys(planned.values()))  # one name when both scales agree, else small / large
    if "faiss-ivf" in planned.values():
        kernels = kernels.replace("faiss-ivf", f"faiss-ivf (nprobe {bundle.config.scoring.ivf_nprobe})")
    rows = []
    for name in backends:
        log.info("%s / %s: in-process compute", preset, name)
        compute = time_ours(bundle, load_backend(bundle, name), frames, args.warmup)
        service_s = float(np.median(compute["frame"])) / 1000
        rate = args.load / service_s
        n = args.warmup + args.frames
        log.info("%s / %s: runtime at %.2f frames/s (%.0f%% of capacity), %d frames", preset, name, rate, 100 * args.load, n)
        paced = run_line(bundle_dir, replay, n, rate, backend=name, workers=args.workers, deadline_ms=args.deadline_ms)
        warm = [v for v in paced.verdicts if v["seq"] > args.warmup]
        log.info("%s / %s: runtime free-running, %d frames", preset, name, n)
        free = run_line(bundle_dir, replay, n, None, backend=name, workers=args.workers, ring_slots=n + 1,
                        deadline_ms=max(args.deadline_ms, 4000 * n * service_s))
        throughput = free.steady_throughput(args.warmup)
        samples = stage_samples(warm)
        rows.append({
            "preset": preset, "backend": name, "knn": kernels,
            "geometry": geometry, "frame": [frames[0].shape[1], frames[0].shape[0]], "input": [in_w, in_h],
            "window": resolve_scoring(bundle.config.scoring, bundle).window, "coreset": cfg.bank.coreset_ratio,
            "bank_codes": int(sum(bundle.manifest["banks"][s]["count"] for s in ("small", "large"))),
            "retrieve": retrieve,
            "compute_ms": {k: percentiles(v) for k, v in compute.items()},
            "stages_ms": {k: percentiles(v) for k, v in samples.items()},
            "total_samples_ms": samples["total"].tolist(),
            "rate_hz": rate, "throughput_fps": throughput,
            "grabbed": paced.frames_grabbed + free.frames_grabbed,
            "verdicts": len(paced.verdicts) + len(free.verdicts), "verdict_counts": paced.by_verdict(),
        })
        print(f"{preset:10s} {name:12s} compute {np.median(compute['frame']):8.1f} ms/frame  "
              f"end-to-end p50 {rows[-1]['stages_ms']['total']['p50']:8.1f} ms  throughput {throughput:6.2f} frames/s", flush=True)
    if args.peer and in_h * in_w <= PEER_MAX_PIXELS:
        log.info("%s: Patch SVDD reference inference (peer)", preset)
        from sclvi.roi import FrameMapping

        to_input = FrameMapping.from_config(cfg.geometry).to_input
        peer = time_peer(bundle, [to_input(f) for f in frames[: args.warmup + args.peer_frames]], args.warmup)
        for r in rows:
            r["peer_ms"] = {k: percentiles(v) for k, v in peer.items()}
            r["peer_ratio"] = r["peer_ms"]["frame"]["p50"] / r["compute_ms"]["frame"]["p50"]
        print(f"{preset:10s} {'peer':12s} compute {np.median(peer['frame']):8.1f} ms/frame", flush=True)
    return rows


def _workers(n: int) -> str:
    return "one inference worker" if n == 1 else f"{n} inference workers (cores split between them; in-process compute: one)"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _retrieval(k: int | None, images: int) -> str:
    """The retrieval cell: each frame searched among K of the bank's images, or the whole bank."""
    return "off" if k is None else f"{k} of {images} images"


def save_histogram(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        x = np.asarray(r["total_samples_ms"])
        label = (f"{r['preset']} / {r['backend']} / {r['geometry']} / w {r['window']} / cs {r['coreset']:g} "
                 f"(p50 {np.median(x):.0f} ms)")
        ax.hist(x, bins=min(40, max(5, len(x) // 2)), alpha=0.5, label=label)
    ax.set_xlabel("acquisition -> verdict at the PLC (ms)")
    ax.set_ylabel("frames")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict[str, Any]], args: SimpleNamespace, out: Path, seconds: float) -> Path:
    info = machine()
    tag = "gpu" if "gpu" in info else "cpu"
    hist = out / f"{args.report}-{tag}.png"
    save_histogram(hist, rows, f"End-to-end latency ({tag}, stride {args.small_stride})")
    source = "random weights, synthetic parts" if args.bundle is None else \
        f"trained bundle `{args.bundle}` replaying {args.replay_images} test images of `{args.data}`"
    lines = [
        f"# Line latency and throughput ({tag})",
        "",
        f"Geometry per row: `256` = frames squashed to 256x256; `WxH@s` = native W x H camera frames, the largest centred "
        f"roi that tiles inspected at scale s (aspect kept; `preprocess` includes the cut and scale). 32-px patches at stride "
        f"{args.small_stride}, 64-px at stride 16; "
        f"memory bank from {args.train_images} images (window and coreset per row: a coreset is taken per grid "
        f"cell when windowed; `retrieval`: each frame searched among its K nearest bank images, `bank.retrieve`, off "
        f"for a coreset bank); {_workers(args.workers)}; {source}. Latency: {args.frames} frames through the runtime paced at "
        f"{100 * args.load:.0f}% of the measured capacity, {args.warmup} warm-up frames excluded. Throughput: "
        f"the same runtime with the source free-running. `publish` = worker verdict -> received by the PLC "
        f"stand-in over ZeroMQ; `total` = acquisition -> PLC. Wall time {seconds / 60:.1f} min.",
        "",
        "## Summary",
        "",
        "| preset | backend | geometry | model input | k-NN | window | coreset | bank codes | retrieval | compute ms/frame (p50) | k-NN ms (p50) | end-to-end p50 / p95 / p99 ms | throughput frames/s | peer ms/frame (p50) | peer / ours |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r["stages_ms"]["total"]
        peer = r.get("peer_ms", {}).get("frame", {}).get("p50")
        lines.append(
            f"| {r['preset']} | {r['backend']} | {r['geometry']} | {r['input'][0]}x{r['input'][1]} | {r['knn']} | {'none' if r['window'] is None else '+-' + str(r['window'])} | "
            f"{r['coreset']:g} | {r['bank_codes']:,} | {_retrieval(r.get('retrieve'), args.train_images)} | {r['compute_ms']['frame']['p50']:.1f} | {r['compute_ms']['knn']['p50']:.1f} | "
            f"{t['p50']:.1f} / {t['p95']:.1f} / {t['p99']:.1f} | {r['throughput_fps']:.2f} | "
            f"{_ms(peer)} | {'-' if peer is None else format(r['peer_ratio'], '.1f') + 'x'} |"
        )
    for r in rows:
        lines += ["", f"## {r['preset']} / {r['backend']} / {r['geometry']} / window {r['window']} / coreset {r['coreset']:g} / "
                  f"retrieval {_retrieval(r.get('retrieve'), args.train_images)} (k-NN: {r['knn']}; {r['rate_hz']:.2f} frames/s offered; "
                  f"verdicts {r['verdicts']} of {r['grabbed']} frames grabbed)", ""]
        lines += stage_table(r["stages_ms"])
        if "peer_ms" in r:
            lines += ["", "In-process compute, ours vs the peer (ms, p50):", "",
                      "| | embed | k-NN | maps + fuse | frame |", "|---|---:|---:|---:|---:|"]
            c, p = r["compute_ms"], r["peer_ms"]
            lines.append(f"| ours | {c['embed']['p50']:.1f} | {c['knn']['p50']:.1f} | {c['fuse']['p50']:.1f} | {c['frame']['p50']:.1f} |")
            lines.append(f"| peer | {p['embed']['p50']:.1f} | {p['knn']['p50']:.1f} | {p['fuse']['p50']:.1f} | {p['frame']['p50']:.1f} |")
    lines += ["", f"Histogram: `{hist.name}`"]
    slim = [{k: v for k, v in r.items() if k != "total_samples_ms"} for r in rows]
    return save_report(out, f"{args.report}-{tag}", lines, info,
                        {"args": {k: str(v) for k, v in vars(args).items()}, "rows": slim})


def latency(
    presets: list[str] = typer.Option(["lite", "dense-lite"], metavar="PRESET,...", help="encoder presets"),
    backends: list[str] = typer.Option(["auto"], metavar="BACKEND,...", help="auto: every backend usable here"),
    geometries: list[str] = typer.Option(
        ["256"], metavar="GEOMETRY,...",
        help="per row: SIZE (frames squashed to SIZE x SIZE) or WxH\\[@SCALE] (native W x H frames at SCALE)"),
    small_stride: int = typer.Option(4),
    train_images: int = typer.Option(20, help="images in the memory bank"),
    knn_modes: list[str] = typer.Option(
        ["auto/1.0"], metavar="MODE,...",
        help="WINDOW/CORESET\\[/KERNEL\\[/K]] per row: window auto (as the bank measured), none or cells; coreset = fraction "
        "of the bank kept (per grid cell when windowed); kernel = scoring.knn (auto); K = bank.retrieve, the bank images "
        "each frame is searched among (default: the bundle's)"),
    replay_images: int = typer.Option(16, help="distinct synthetic parts the camera replays"),
    frames: int = typer.Option(30, help="timed frames through the runtime"),
    compute_frames: int = typer.Option(10, help="timed frames in process"),
    warmup: int = typer.Option(3),
    workers: int = typer.Option(1, help="inference workers in the runtime (cores split between them)"),
    load: float = typer.Option(0.7, help="offered rate as a fraction of the measured capacity"),
    deadline_ms: float = typer.Option(30000.0),
    peer: bool = typer.Option(True, help="time the Patch SVDD-style peer in the same run"),
    peer_frames: int = typer.Option(3),
    work: Optional[Path] = typer.Option(None, help="scratch folder (default: a temporary one)"),
    report: str = typer.Option("latency", help="report name: <report>-<cpu|gpu>.md/.json/.png"),
    bundle: Optional[Path] = typer.Option(
        None, help="time this trained bundle (its preset, geometry and bank) instead of random-weight ones; needs --data"),
    data: Optional[Path] = typer.Option(
        None, help="with --bundle: its data set; the camera replays --replay-images of its test images and training "
        "images outside the bank calibrate the thresholds"),
    out: Path = OUT,
) -> Path:
    """Per-stage latency and throughput of the runtime per backend and preset, against the Patch SVDD peer."""
    if (bundle is None) != (data is None):
        raise typer.BadParameter("--bundle and --data go together", param_hint="--bundle")
    args = SimpleNamespace(
        presets=listed(presets, option="--presets"), backends=listed(backends, option="--backends"),
        geometries=listed(geometries, option="--geometries"), small_stride=small_stride, train_images=train_images,
        knn_modes=listed(knn_modes, option="--knn-modes"), replay_images=replay_images, frames=frames,
        compute_frames=compute_frames, warmup=warmup, workers=workers, load=load, deadline_ms=deadline_ms, peer=peer,
        peer_frames=peer_frames, work=work, report=report, bundle=bundle, data=data, out=start(out))
    if args.bundle is not None:
        from sclvi.bundle import load_bundle

        trained = load_bundle(args.bundle)
        g, small = trained.config.geometry, trained.manifest["banks"]["small"]
        h, w = g.input_hw
        args.presets, args.geometries = [trained.config.preset], [str(w) if g.frame is None else f"{w}x{h}"]
        args.small_stride = g.small_stride
        args.train_images = small["count"] // (small["grid"][0] * small["grid"][1])  # whole images (no coreset)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for preset in args.presets:
            for geometry in args.geometries:
                for mode in args.knn_modes:
                    rows += bench_one(preset, mode, geometry, args, work)
                    write_report(rows, args, args.out, time.perf_counter() - t0)  # partial reports as rows finish
    path = write_report(rows, args, args.out, time.perf_counter() - t0)
    print(f"report: {path}")
    return path


app = benchmark_app(latency)


def main(argv: list[str] | None = None) -> Path:
    return invoke(app, argv)


if __name__ == "__main__":
    app()
