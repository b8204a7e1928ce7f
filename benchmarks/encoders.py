"""Encoder cost per frame: MACs (counted) and ms for each backend and preset.

    sclvi bench encoders [--presets paper,lite] [--repeats 3]

One frame = all 32-px patches at the configured stride (3249 at 256x256 stride 4) through the main
encoder in one call, plus the 64-px grids (169) through the secondary encoder in one call. Weights are
random (timing does not depend on them). Backends: torch CPU, ONNX Runtime CPU (FP32), torch CUDA FP16
(the latency proxy for TensorRT where TensorRT is absent) and TensorRT when present.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

import typer

from sclvi.architecture import macs, main_layers, secondary_layers
from sclvi.benchmarks.common import OUT, benchmark_app, invoke, listed, machine, save_report, start, untrained_bundle
from sclvi.config import Config, build_config
from sclvi.geometry import TwoScaleGeometry


def frame_macs(cfg: Config) -> int:
    """Patch by patch for the paper family; one fully convolutional pass over the frame for dense."""
    g = TwoScaleGeometry.from_config(cfg.geometry)
    secondary = macs(secondary_layers(cfg.encoder), 2) * g.large.count
    if cfg.encoder.family == "dense":
        return macs(main_layers(cfg.encoder), cfg.geometry.image_size) + secondary
    return macs(main_layers(cfg.encoder), 32) * g.small.count + secondary


def _time(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t0))
    return out


def _frame_inputs(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    g = TwoScaleGeometry.from_config(cfg.geometry)
    rng = np.random.default_rng(0)
    return (
        rng.normal(scale=0.3, size=(g.small.count, 3, 32, 32)).astype(np.float32),
        rng.uniform(-1, 1, size=(g.large.count, cfg.encoder.embed_dim, 2, 2)).astype(np.float32),
    )


def bench_preset(preset: str, repeats: int, work: Path) -> list[dict[str, Any]]:
    import torch

    from sclvi.bundle import load_bundle
    from sclvi.engines import load_backend
    from sclvi.engines.export import export_onnx
    from sclvi.model import build_model, load_numpy_state

    cfg = build_config(preset)
    size = cfg.geometry.image_size
    export_onnx(untrained_bundle(work / preset, cfg))
    bundle = load_bundle(work / preset)
    patches, grids = _frame_inputs(cfg)
    rows = []
    frame = np.random.default_rng(0).normal(scale=0.3, size=(1, 3, size, size)).astype(np.float32)
    for name in ("torch", "onnxruntime"):
        be = load_backend(bundle, name)
        if callable(getattr(be, "encode_frames", None)):  # dense family: both scales in one call
            ms = _time(lambda: be.encode_frames(frame), repeats)
        else:
            ms = _time(lambda: (be.encode_small(patches), be.encode_grid(grids)), repeats)
        rows.append({"preset": preset, "backend": f"{be.name} (CPU)", "ms": ms})
        print(f"{preset:6s} {be.name:18s} {np.median(ms):9.1f} ms/frame", flush=True)
    if torch.cuda.is_available():
        gpu = build_model(cfg.encoder)
        load_numpy_state(gpu, bundle.weights)
        gpu = gpu.eval().half().cuda()
        p, gr = torch.from_numpy(patches).half().cuda(), torch.from_numpy(grids).half().cuda()

        def run() -> None:
            with torch.inference_mode():
                gpu.main(p)
                gpu.secondary(gr)
            torch.cuda.synchronize()

        ms = _time(run, max(repeats, 20))
        rows.append({"preset": preset, "backend": f"torch CUDA FP16 ({torch.cuda.get_device_name()})", "ms": ms})
        print(f"{preset:6s} torch-cuda-fp16    {np.median(ms):9.2f} ms/frame", flush=True)
    for r in rows:
        r.update({"macs_per_frame": frame_macs(cfg), "median_ms": float(np.median(r["ms"]))})
    return rows


def encoders(
    presets: list[str] = typer.Option(["paper", "lite"], metavar="PRESET,...", help="encoder presets"),
    repeats: int = typer.Option(3),
    out: Path = OUT,
) -> Path:
    """Encoder ms per frame for each backend and preset."""
    args = SimpleNamespace(presets=listed(presets, option="--presets"), repeats=repeats, out=start(out))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            rows += bench_preset(preset, args.repeats, Path(tmp))
    info = machine()
    tag = "gpu" if "gpu" in info else "cpu"
    (args.out / f"encoders-{tag}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    lines = [
        f"# Encoder cost per frame ({tag})",
        "",
        "One 256x256 frame at stride 4 (3249 32-px patches, 169 64-px patches). paper/lite: all patches in one "
        "main-encoder call and the gathered 2x2 grids in one secondary-encoder call. dense/dense-lite: one fully "
        "convolutional call over the frame giving both scales (exactly the same codes as patch by patch). "
        f"Median of {args.repeats} runs after a warm-up; threads = all cores. Random weights.",
        "",
        "| preset | backend | GMAC / frame | ms / frame |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {r['preset']} | {r['backend']} | {r['macs_per_frame'] / 1e9:.1f} | {r['median_ms']:.1f} |" for r in rows]
    path = save_report(args.out, f"encoders-{tag}", lines, info)
    print(f"report: {path}")
    return path


app = benchmark_app(encoders)


def main(argv: list[str] | None = None) -> Path:
    return invoke(app, argv)


if __name__ == "__main__":
    app()
