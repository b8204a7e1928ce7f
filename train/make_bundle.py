"""Data set -> a bundle ready for the line: train the encoders, then bank every training image's codes.
What `sclvi train`, the demo and the quality benchmark all do; the bank is built with the torch encoder the
training just wrote (engines are built later, from the bundle)."""

from __future__ import annotations

import logging
from pathlib import Path

from sclvi.bundle import ModelBundle
from sclvi.config import Config

log = logging.getLogger(__name__)


def train_and_bank(cfg: Config, data: Path, out: Path, resume: bool = False, bank: bool = True) -> ModelBundle:
    """Train on `data`/train/good into the bundle folder `out` (from its checkpoint when `resume`), then build
    its memory bank unless `bank` is False (`sclvi train --no-bank`: `sclvi bank` builds it later)."""
    from sclvi.dataset import read_dataset
    from sclvi.engines import load_backend
    from sclvi.memory_bank import build_memory_bank
    from sclvi.train.trainer import train

    bundle = train(cfg, data, out, resume=resume)
    if bank:
        build_memory_bank(bundle, load_backend(bundle, "torch"), read_dataset(data, need_test=False).train)
    log.info("bundle: %s", out)
    return bundle
