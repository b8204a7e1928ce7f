"""Soak: many frames through the real runtime; every frame grabbed must reach the PLC as exactly one verdict.

    sclvi bench soak [--frames 10000] [--preset dense-lite] [--rate-hz auto]

The folder source loops over synthetic parts at a steady rate (by default 70% of the capacity measured on
a short run first, so the line is busy but not overloaded); the PLC stand-in acknowledges every verdict.
Counts frames grabbed vs verdicts received (must be equal, with no gap in the sequence numbers), the
NOT_INSPECTED verdicts by reason, resends, and per-stage latency p50/p95/p99.
Writes soak-<cpu|gpu>.md / .json.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import typer

from sclvi.benchmarks.common import OUT, benchmark_app, invoke, machine, save_report, start
from sclvi.benchmarks.line import LineRun, bench_config, percentiles, prepare_bundle, run_line, stage_samples, stage_table

log = logging.getLogger(__name__)


def soak(args: SimpleNamespace, work: Path) -> tuple[LineRun, float]:
    cfg = bench_config(args.preset, args.image_size, args.small_stride)
    bundle_dir, replay = prepare_bundle(work, cfg, args.train_images, args.replay_images)
    runtime = {"workers": args.workers, "deadline_ms": args.deadline_ms}
    rate = args.rate_hz
    if rate is None:
        probe = run_line(bundle_dir, replay, 40, None, ring_slots=41, **{**runtime, "deadline_ms": 600_000})
        capacity = probe.steady_throughput(10)
        rate = args.load * capacity
        log.info("capacity %.1f frames/s: soaking at %.1f frames/s", capacity, rate)
    log.info("soak: %d frames at %.1f frames/s (about %.0f s)", args.frames, rate, args.frames / rate)
    return run_line(bundle_dir, replay, args.frames, rate, progress=True, **runtime), rate


def write_report(run: LineRun, rate: float, args: SimpleNamespace, out: Path) -> Path:
    info = machine()
    tag = "gpu" if "gpu" in info else "cpu"
    samples = stage_samples(run.verdicts)
    stats = {k: percentiles(v) for k, v in samples.items()}
    gaps = run.sequence_gaps()
    counts = run.by_verdict()
    ok = len(run.verdicts) == run.frames_grabbed and not gaps
    lines = [
        f"# Soak ({tag}): {run.frames_grabbed} frames through the runtime",
        "",
        f"Preset `{args.preset}` (random weights), {args.image_size} px frames, 32-px stride {args.small_stride}; "
        f"{args.workers} inference worker(s); folder source looping over {args.replay_images} synthetic parts at "
        f"{rate:.1f} frames/s; deadline {args.deadline_ms:.0f} ms; PLC stand-in acknowledging over ZeroMQ "
        f"(DEALER -> ROUTER). Wall time {run.wall_s / 60:.1f} min.",
        "",
        "| | |",
        "|---|---:|",
        f"| frames grabbed | {run.frames_grabbed} |",
        f"| verdicts received (unique) | {len(run.verdicts)} |",
        f"| equal, no sequence gap | {'yes' if ok else f'NO: {len(gaps)} missing'} |",
        *(f"| {k} | {v} |" for k, v in sorted(counts.items())),
        f"| resends (acknowledged late) | {run.totals.get('resends', 0)} |",
        f"| duplicates seen by the PLC | {run.duplicates} |",
        f"| send failures | {run.totals.get('send_failures', 0)} |",
        "",
        "Per-stage latency of the inspected frames:",
        "",
        *stage_table(stats),
    ]
    return save_report(out, f"soak-{tag}", lines, info, {
        "args": {k: str(v) for k, v in vars(args).items()}, "rate_hz": rate,
        "frames_grabbed": run.frames_grabbed, "verdicts": len(run.verdicts), "gaps": gaps, "counts": counts,
        "duplicates": run.duplicates, "totals": run.totals, "stages_ms": stats, "wall_s": run.wall_s,
    })


def soak_command(
    frames: int = typer.Option(10_000),
    preset: str = typer.Option("dense-lite"),
    image_size: int = typer.Option(256),
    small_stride: int = typer.Option(8),
    train_images: int = typer.Option(10, help="images in the memory bank"),
    replay_images: int = typer.Option(16),
    workers: int = typer.Option(1),
    rate_hz: Optional[float] = typer.Option(None, help="default: --load x the measured capacity"),
    load: float = typer.Option(0.7),
    deadline_ms: float = typer.Option(1000.0),
    work: Optional[Path] = typer.Option(None, help="scratch folder (default: a temporary one)"),
    out: Path = OUT,
) -> Path:
    """10,000 frames through the runtime: verdicts received must equal frames grabbed."""
    args = SimpleNamespace(frames=frames, preset=preset, image_size=image_size, small_stride=small_stride,
                           train_images=train_images, replay_images=replay_images, workers=workers, rate_hz=rate_hz,
                           load=load, deadline_ms=deadline_ms, work=work, out=start(out))
    with tempfile.TemporaryDirectory() as tmp:
        run, rate = soak(args, args.work or Path(tmp))
    path = write_report(run, rate, args, args.out)
    print(path.read_text().split("Per-stage")[0])
    print(f"report: {path}")
    return path


app = benchmark_app(soak_command)


def main(argv: list[str] | None = None) -> Path:
    return invoke(app, argv)


if __name__ == "__main__":
    app()
