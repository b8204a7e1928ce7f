"""Shared fixtures: small configs, synthetic data sets and untrained bundles, all generated here."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from sclvi.config import Config, build_config

# Tiny widths keep unit tests fast; the architecture (layer kinds and spatial sizes) is unchanged.
TINY_ENCODER = {"conv_widths": (8, 16, 16, 16, 16, 16), "secondary_width": 16, "embed_dim": 16, "groups": 4}


@pytest.fixture(autouse=True)
def _no_thread_left_running():
    """A non-daemon thread a test leaves running keeps pytest's process alive after the last test, so CI
    hangs past its limit with every test green (an asyncua client thread did). Fail the test that left it.
    (Idle thread-pool workers are exempt: concurrent.futures ends them at exit.)"""
    from concurrent.futures.thread import _worker

    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
                and getattr(t, "_target", None) is not _worker]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"non-daemon threads left running (they would keep the test process alive): {[t.name for t in left]}"


def tiny_config(image_size: int = 96, **sections: dict) -> Config:
    overrides = {"encoder": TINY_ENCODER, "geometry": {"image_size": image_size}}
    for key, value in sections.items():
        overrides[key] = {**overrides.get(key, {}), **value}
    return build_config("lite", overrides)


@pytest.fixture(scope="session")
def synthetic_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sclvi.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    return write_synthetic(root, "object", size=96, n_train=6, n_test_good=3, n_test_defect=2, seed=1)


def make_bundle(path: Path, cfg: Config, train_images: list[Path] | None = None, seed: int = 0):
    """An untrained (random-weight) bundle, with a memory bank when images are given."""
    from sclvi.benchmarks.common import untrained_bundle

    return untrained_bundle(path, cfg, train_images, seed)


@pytest.fixture()
def random_bundle(tmp_path: Path, synthetic_object: Path):
    from sclvi.dataset import read_dataset

    return make_bundle(tmp_path / "bundle", tiny_config(), read_dataset(synthetic_object).train)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Backstop for a hang after the last test (a thread or child that keeps the process alive): after 60 s
    print every thread's stack and exit non-zero, so CI goes red with the culprit instead of timing out."""
    import faulthandler
    import sys

    def watchdog() -> None:
        time.sleep(60)
        print("\npytest did not exit 60 s after the last test; threads:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(3)

    threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()
