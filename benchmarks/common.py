"""What every benchmark report states: the machine, the versions, and where it was written."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

#: Reports go to benchmarks/reports of the checkout the command runs in (the repo root).
REPORTS = Path("benchmarks") / "reports"


def parse_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The tail every benchmark shares: `--out`, timestamped logs, the report folder made."""
    ap.add_argument("--out", type=Path, default=REPORTS, help="where the report goes")
    args = ap.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


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
