"""What every benchmark report states: the machine, the versions, and where it was written."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import typer

#: Reports go to benchmarks/reports of the checkout the command runs in (the repo root).
REPORTS = Path("benchmarks") / "reports"


#: The option every benchmark has.
OUT = typer.Option(REPORTS, "--out", help="where the report goes")


def start(out: Path) -> Path:
    """What every benchmark does first: timestamped logs, the report folder made."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    out.mkdir(parents=True, exist_ok=True)
    return out


def listed(values: Iterable[str] | None, cast: Callable[[str], Any] = str, choices: Iterable[str] | None = None,
           option: str = "") -> list[Any]:
    """The values of a list option, given repeated or comma-separated (`--seeds 0,1,2` = `--seeds 0 --seeds 1
    --seeds 2`): typer options take one value per flag, and a list typed once reads better."""
    items = [v for value in values or () for v in value.replace(",", " ").split()]
    allowed = None if choices is None else sorted(choices)
    bad = [v for v in items if allowed is not None and v not in allowed]
    if bad:
        raise typer.BadParameter(f"{', '.join(bad)}: not one of {', '.join(allowed or [])}", param_hint=option)
    try:
        return [cast(v) for v in items]
    except ValueError:
        raise typer.BadParameter(f"{', '.join(items)}: expected {getattr(cast, '__name__', cast)} values",
                                 param_hint=option) from None


def benchmark_app(command: Callable[..., Any]) -> typer.Typer:
    """A benchmark's typer app: its one command, run by `sclvi bench NAME` and `python -m sclvi.benchmarks.NAME`."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    return app


def invoke(app: typer.Typer, argv: list[str] | None = None) -> Any:
    """Run a benchmark on `argv` in process and return what it returns (its report's path): what tests and
    scripts call. Bad options raise click's usage errors instead of exiting."""
    return typer.main.get_command(app).main(args=argv, standalone_mode=False)


def machine() -> dict[str, str]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "os": platform.platform(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        if gpu.returncode == 0 and gpu.stdout.strip():
            info["gpu"] = gpu.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    for pkg in ("sclvi", "numpy", "numba", "torch", "onnxruntime", "faiss-cpu"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return info


def machine_table(info: dict[str, str]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in info.items())


def save_report(out: Path, name: str, lines: list[str], info: dict[str, str], payload: dict[str, Any] | None = None) -> Path:
    """Every benchmark's report: NAME.md, its lines then the machine they were measured on (figures mean nothing
    without it), and NAME.json, the payload beside the same machine facts (none without a payload)."""
    out.mkdir(parents=True, exist_ok=True)
    gap = [] if lines and lines[-1] == "" else [""]
    path = out / f"{name}.md"
    path.write_text("\n".join([*lines, *gap, "## Machine", "", machine_table(info), ""]))
    if payload is not None:
        (out / f"{name}.json").write_text(json.dumps({"machine": info, **payload}, indent=2, default=str))
    return path


def untrained_bundle(path: Path, cfg, train_images: list[Path] | None = None, seed: int = 0):
    """A random-weight bundle (timing does not depend on the weights), with a memory bank built from
    `train_images` when given. Needs torch (the `train` extra)."""
    import numpy as np
    import torch

    from sclvi.bundle import load_bundle, save_bundle
    from sclvi.engines.torch_backend import TorchBackend
    from sclvi.images import mean_image
    from sclvi.memory_bank import build_memory_bank
    from sclvi.model import build_model, state_to_numpy
    from sclvi.roi import read_input

    torch.manual_seed(seed)
    model = build_model(cfg.encoder).eval()
    if train_images:
        mean = mean_image(np.stack([read_input(p, cfg.geometry) for p in train_images]), cfg.preprocess.photometric,
                          cfg.preprocess.mean)
    else:
        mean = np.full((*cfg.geometry.input_hw, 3), 128, np.float32)
    save_bundle(path, cfg, state_to_numpy(model), mean, {"note": "untrained (random weights)"})
    bundle = load_bundle(path)
    if train_images:
        build_memory_bank(bundle, TorchBackend(bundle), train_images)
    return load_bundle(path)
