"""The line as the benchmarks see it: the real edge runtime (processes, shared-memory ring, ZeroMQ) on a
folder source, with a PLC stand-in that acknowledges every verdict and notes when it arrived.

Shared by the latency and soak benchmarks: a bundle made for timing, a run of the runtime, and the
per-stage statistics of the verdicts the PLC received.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Stages in pipeline order, as they appear in the verdicts' `latency_ms` (plus `publish`, measured at the PLC).
STAGES = ("acquire", "queue", "preprocess", "embed", "knn", "fuse", "decide", "publish", "total")


def parse_geometry(spec: str) -> dict[str, Any]:
    """A benchmark geometry: `256` (frames squashed to 256x256) or `WxH[@SCALE]` (native W x H camera frames
    at SCALE; `centred_roi` picks the roi)."""
    try:
        if "x" not in spec:
            return {"image_size": int(spec)}
        size, _, scale = spec.partition("@")
        w, h = (int(v) for v in size.split("x"))
        return {"frame": [w, h], "scale": float(scale or 1.0)}
    except ValueError:
        raise ValueError(f"geometry {spec!r}: expected SIZE or WIDTHxHEIGHT[@SCALE], e.g. 256 or 2448x2048@0.5") from None


def centred_roi(frame: list[int], scale: float, small_stride: int, large_stride: int = 16) -> list[int]:
    """The largest centred roi of a W x H frame whose size at `scale` both patch grids tile exactly (a 2448 px
    side at scale 0.5 is 1224 px, which 64-px patches at stride 16 do not tile: 2432 px of it are inspected)."""
    from sclvi.config import GeometryConfig
    from sclvi.roi_propose import snap_span

    g = GeometryConfig(small_stride=small_stride, large_stride=large_stride)
    (x, w), (y, h) = (snap_span(0, side, side, scale, g) for side in frame)
    return [x, y, w, h]


def bench_config(preset: str, image_size: int | str, small_stride: int, window: str = "auto", coreset: float = 1.0,
                 knn: str = "auto", retrieve: int | None = None) -> Any:
    """A preset at the benchmark's geometry (a square size, or a `parse_geometry` spec) and small-patch stride;
    `window` (auto, none or cells), `coreset` (bank fraction kept; per cell when windowed), `knn` (kernel)
    and `retrieve` (images searched per frame, bank.retrieve; None: the preset's) pick the k-NN mode."""
    from sclvi.config import build_config

    position_window: Any = {"auto": "auto", "none": None}.get(window, window)
    if isinstance(position_window, str) and position_window != "auto":
        position_window = int(position_window)
    geometry = {**parse_geometry(str(image_size)), "small_stride": small_stride}
    if "frame" in geometry:
        geometry["roi"] = centred_roi(geometry["frame"], geometry["scale"], small_stride)
    return build_config(preset, {"geometry": geometry,
                                 "scoring": {"position_window": position_window, "knn": knn},
                                 "bank": {"coreset_ratio": coreset,
                                          **({} if retrieve is None else {"retrieve": retrieve})}})


def prepare_bundle(work: Path, cfg: Any, n_train: int, n_replay: int, seed: int = 0) -> tuple[Path, Path]:
    """A random-weight bundle with its memory bank, ONNX engines and calibrated thresholds, plus a folder
    of synthetic parts (good and defective) to replay as the camera. Returns (bundle dir, replay dir)."""
    from sclvi.benchmarks.common import untrained_bundle
    from sclvi.bundle import load_bundle
    from sclvi.calib.calibrate import calibrate
    from sclvi.dataset import read_dataset
    from sclvi.engines import load_backend
    from sclvi.engines.export import export_onnx
    from sclvi.synthetic import DEFECTS, write_synthetic

    frame = cfg.geometry.frame
    size = cfg.geometry.image_size if frame is None else 256  # native frames: made at 256 px, then resized
    n_defect = max(1, n_replay // 8)  # per defect type: about half the parts are defective
    data = write_synthetic(work / "data", "object", size=size, n_train=n_train + 4,
                           n_test_good=max(1, n_replay - len(DEFECTS) * n_defect), n_test_defect=n_defect, seed=seed)
    if frame is not None:
        _resize_all(data, tuple(frame))
    ds = read_dataset(data)
    bundle_dir = work / "bundle"
    bundle = untrained_bundle(bundle_dir, cfg, ds.train[:n_train], seed)
    export_onnx(bundle)
    bundle = load_bundle(bundle_dir)
    held_out = ds.train[n_train:]  # 4 good images never in the bank
    calibrate(bundle, load_backend(bundle), held_out, target_frr=0.25)
    replay = work / "replay"
    replay.mkdir(exist_ok=True)
    for i, t in enumerate(ds.test):
        (replay / f"{i:04d}{t.path.suffix}").write_bytes(t.path.read_bytes())
    return bundle_dir, replay


def prepare_trained(work: Path, source: Path, data: Path, scoring: dict[str, Any], n_replay: int,
                    retrieve: int | None = None) -> tuple[Path, Path]:
    """A copy of a trained bundle with `scoring` (k-NN kernel, position window) and `retrieve` (bank.retrieve:
    images searched per frame; None: the bundle's) set, ONNX engines, and thresholds calibrated on training
    images its bank never held, plus `n_replay` of the data set's test images (spread over its defect types,
    at their native sizes) for the camera to replay."""
    import shutil

    from sclvi.bundle import load_bundle, set_bank_config, set_scoring_config
    from sclvi.calib.calibrate import calibrate, required_images
    from sclvi.dataset import read_dataset
    from sclvi.engines import load_backend
    from sclvi.engines.export import export_onnx
    from sclvi.memory_bank import bank_images

    bundle_dir = work / "bundle"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(source, bundle_dir, ignore=shutil.ignore_patterns("checkpoint.pt"))
    bundle = load_bundle(bundle_dir)
    set_scoring_config(bundle, bundle.config.scoring.model_copy(update=scoring))
    if retrieve is not None:  # which bank images a frame is searched among: the bank itself is unchanged
        set_bank_config(bundle, bundle.config.bank.model_copy(update={"retrieve": retrieve}))
    if "onnx" not in bundle.manifest.get("engines", {}):
        export_onnx(bundle)
    bundle = load_bundle(bundle_dir)
    ds = read_dataset(data)
    banked = set(bank_images(ds.train, bundle.config.bank.max_images, bundle.config.bank.seed))
    held_out = [p for p in ds.train if p not in banked]
    target = 0.25
    if len(held_out) < required_images(target):
        raise ValueError(f"{data}: {len(held_out)} training images outside the bank; calibration needs "
                         f"{required_images(target)} (build the bank from fewer images)")
    calibrate(bundle, load_backend(bundle), held_out[:32], target_frr=target)
    replay = work / "replay"
    replay.mkdir()
    picks = ds.test[:: max(1, len(ds.test) // n_replay)][:n_replay]
    for i, t in enumerate(picks):
        (replay / f"{i:04d}{t.path.suffix}").write_bytes(t.path.read_bytes())
    return bundle_dir, replay


def _resize_all(data: Path, frame: tuple[int, int]) -> None:
    """Every image and mask of a synthetic data set resized to the camera frame (timing needs the pixels, not
    fine detail)."""
    from PIL import Image

    for p in data.rglob("*.png"):
        with Image.open(p) as im:
            resized = im.resize(frame, Image.NEAREST if "ground_truth" in p.parts else Image.BILINEAR)
        resized.save(p)


@dataclass
class LineRun:
    """What one run of the runtime delivered to the PLC."""

    frames_grabbed: int
    verdicts: list[dict[str, Any]]  # unique (camera, seq), each with `t_recv_ns` added
    duplicates: int  # resends the PLC had already acknowledged
    totals: dict[str, int]  # the runtime's counters at shutdown
    wall_s: float

    def by_verdict(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.verdicts:
            key = v["verdict"] if v["verdict"] != "NOT_INSPECTED" else f"NOT_INSPECTED ({v['reason']})"
            out[key] = out.get(key, 0) + 1
        return out

    def steady_throughput(self, skip: int) -> float:
        """Inspected verdicts per second at the PLC after the first `skip` frames (nan if fewer than 2)."""
        done = sorted(v["t_recv_ns"] for v in self.verdicts if v["seq"] > skip and v["verdict"] != "NOT_INSPECTED")
        return (len(done) - 1) / ((done[-1] - done[0]) / 1e9) if len(done) > 1 else float("nan")

    def sequence_gaps(self) -> list[int]:
        """Sequence numbers grabbed but never received (must be empty)."""
        seqs = {v["seq"] for v in self.verdicts}
        return [s for s in range(1, self.frames_grabbed + 1) if s not in seqs]


class _Plc(threading.Thread):
    def __init__(self, endpoint: str, expected: int, progress: bool) -> None:
        super().__init__(daemon=True)
        from tqdm.auto import tqdm

        from sclvi.edge.listener import VerdictListener

        self.listener = VerdictListener(endpoint)  # bound before the runtime starts
        self.verdicts: list[dict[str, Any]] = []
        self.done = threading.Event()
        self.bar = tqdm(total=expected, desc="verdicts at the PLC", unit="frame", disable=not progress)

    def run(self) -> None:
        while not self.done.is_set():
            v = self.listener.receive(50)
            if v is not None:
                v["t_recv_ns"] = time.time_ns()
                self.verdicts.append(v)
                self.bar.update()

    def finish(self) -> None:
        self.done.set()
        self.join(5)
        self.bar.close()
        self.listener.close()


def run_line(bundle_dir: Path, replay: Path, frames: int, rate_hz: float | None, progress: bool = False,
             **runtime: Any) -> LineRun:
    """Replay `frames` frames (looping over the folder) through the runtime; returns what the PLC got.
    `runtime` holds runtime config keys (workers, deadline_ms, backend, ring_slots, ...)."""
    from PIL import Image

    from sclvi.edge.config import load_runtime_config
    from sclvi.edge.endpoints import free_port
    from sclvi.edge.supervisor import Runtime

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    frame_bytes = 0
    for path in replay.iterdir():  # ring slots sized to the largest frame, not to a 5 MP camera
        with Image.open(path) as im:
            frame_bytes = max(frame_bytes, im.width * im.height * 3)
    cfg = load_runtime_config(overrides={
        "bundle": str(bundle_dir), "verdict_endpoint": endpoint, "telemetry_endpoint": None, "control_endpoint": None,
        "cameras": [{"kind": "folder", "camera_id": "bench", "path": str(replay), "rate_hz": rate_hz,
                     "loop": True, "max_frames": frames, "max_frame_bytes": frame_bytes}],
        **runtime,
    })
    plc = _Plc(endpoint, frames, progress)
    plc.start()
    t0 = time.perf_counter()
    totals = Runtime(cfg).run()
    wall = time.perf_counter() - t0
    time.sleep(0.2)
    plc.finish()
    return LineRun(totals["frames_grabbed"], plc.verdicts, plc.listener.duplicates, totals, wall)


def stage_samples(verdicts: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Milliseconds per stage over the inspected verdicts; `publish` is worker -> PLC receipt and
    `total` is acquisition -> PLC receipt (one clock: everything runs on this machine)."""
    out: dict[str, list[float]] = {s: [] for s in STAGES}
    for v in verdicts:
        lat = v.get("latency_ms") or {}
        if "total" not in lat:  # NOT_INSPECTED: no stages
            continue
        for s in STAGES[:-2]:
            if s in lat:
                out[s].append(lat[s])
        decided_ns = v["t_acq_ns"] + lat["total"] * 1e6
        out["publish"].append((v["t_recv_ns"] - decided_ns) / 1e6)
        out["total"].append((v["t_recv_ns"] - v["t_acq_ns"]) / 1e6)
    return {s: np.asarray(x) for s, x in out.items() if x}


def percentiles(samples: np.ndarray) -> dict[str, float]:
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(samples.mean()), "n": int(len(samples))}


def stage_table(stats: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| stage | p50 ms | p95 ms | p99 ms |", "|---|---:|---:|---:|"]
    lines += [f"| {s} | {stats[s]['p50']:.1f} | {stats[s]['p95']:.1f} | {stats[s]['p99']:.1f} |" for s in STAGES if s in stats]
    return lines
