"""Edge runtime parts: pixel formats, the shared-memory ring, messages, decisions, config, sources."""

import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import genicam
from sclvi.edge.config import SourceConfig, load_runtime_config
from sclvi.edge.decide import decide, defect_regions
from sclvi.edge.messages import Reason, Verdict, pack, unpack, verdict_message
from sclvi.edge.pixel_formats import to_array
from sclvi.edge.ring import FREE, READY, RingSpec, SharedRing
from sclvi.edge.ring_lock import RobustLock
from sclvi.edge.sources import FolderSource, GenICamSource, SourceEnded
from sclvi.errors import ConfigError, DataError

VIKY = str(Path(genicam.__file__).parent / "viky.cti")


def test_pixel_formats():
    rgb = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    assert (to_array(rgb.ravel(), 4, 2, "RGB8") == rgb).all()
    assert (to_array(rgb[:, :, ::-1].ravel(), 4, 2, "BGR8") == rgb).all()
    rgba = np.concatenate([rgb, np.full((2, 4, 1), 255, np.uint8)], axis=2)
    assert (to_array(rgba.ravel(), 4, 2, "RGBa8") == rgb).all()
    assert to_array(np.arange(8, dtype=np.uint8), 4, 2, "Mono8").shape == (2, 4)
    bayer = np.array([[10, 20], [30, 40]], np.uint8)  # RG / GB tile
    assert to_array(bayer.ravel(), 2, 2, "BayerRG8").tolist() == [[[10, 25, 40]]]
    assert to_array(bayer.ravel(), 2, 2, "BayerBG8").tolist() == [[[40, 25, 10]]]
    with pytest.raises(DataError, match="incomplete"):
        to_array(np.zeros(5, np.uint8), 4, 2, "Mono8")
    with pytest.raises(DataError, match="not supported"):
        to_array(np.zeros(8, np.uint8), 4, 2, "YUV422")


def _ring_child(spec, frame_shape):
    ring = SharedRing(spec)
    img = ring.image(0)
    ok = img.shape == frame_shape and int(img.sum()) == int(np.arange(np.prod(frame_shape)).astype(np.uint8).sum())
    ring.header[0]["owner"] = 7 if ok else -2
    ring.close()


def test_ring_carries_frames_between_processes_and_claims_one_verdict(tmp_path):
    ctx = mp.get_context("spawn")
    spec = RingSpec(f"sclvi-test-{os.getpid()}", 2, 1000, RobustLock(str(tmp_path / "ring.lock")))
    ring = SharedRing(spec, create=True)
    try:
        assert ring.acquire_free() == 0 and ring.acquire_free() == 1 and ring.acquire_free() is None  # full
        frame = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
        ring.write(0, frame, seq=5, frame_id=9, t_acq_ns=123, trigger=None)
        assert ring.header[0]["state"] == READY and ring.header[0]["seq"] == 5
        p = ctx.Process(target=_ring_child, args=(spec, (20, 30)))
        p.start()
        p.join(30)
        assert ring.header[0]["owner"] == 7  # the child saw the same bytes
        assert ring.take_ready(owner=3) == 0 and ring.take_ready(owner=3) is None
        assert ring.claim_verdict(0) and not ring.claim_verdict(0)  # exactly one verdict
        ring.release(0)
        assert ring.header[0]["state"] == FREE and ring.acquire_free() == 0
        ring.write(0, frame, seq=6, frame_id=10, t_acq_ns=124, trigger=None)
        assert ring.claim_verdict(0, release_if_state=(READY,))  # a queued frame dropped at its deadline
        assert ring.header[0]["state"] == FREE
    finally:
        ring.close(unlink=True)


def test_message_round_trip_and_schema_check():
    msg = verdict_message("cam0", 3, 41, 1000, Verdict.NOT_INSPECTED, reason=Reason.DEADLINE, trigger=7)
    topic, body = unpack(pack(b"verdict", msg))
    assert topic == b"verdict" and body == msg and body["schema"] == 1 and body["reason"] == "deadline"
    with pytest.raises(ValueError, match="schema"):
        unpack(pack(b"verdict", {**msg, "schema": 99}))


def test_regions_in_frame_pixels():
    m = np.zeros((64, 64), np.float32)
    m[4:8, 10:20] = 2.0
    m[40:50, 40:44] = 5.0
    regions = defect_regions(m, 1.0, (128, 256))  # frame is 2x taller, 4x wider than the map
    assert [r["peak"] for r in regions] == [5.0, 2.0]
    assert regions[1]["box"] == [40, 8, 80, 16] and regions[1]["area"] == 40 * 8
    d = decide(5.0, m, 4.0, 1.0, (128, 256))
    assert d.verdict is Verdict.NG and len(d.regions) == 2
    assert decide(3.0, m, 4.0, 1.0, (128, 256)).verdict is Verdict.OK
    # an L-shaped region whose box holds a hotter, separate one: each keeps its own peak and area
    m = np.zeros((64, 64), np.float32)
    m[10:30, 10:12] = 2.0
    m[28:30, 10:30] = 2.0
    m[14:18, 20:24] = 9.0
    regions = defect_regions(m, 1.0, (64, 64))
    assert [(r["peak"], r["area"]) for r in regions] == [(9.0, 16), (2.0, 20 * 2 + 2 * 18)]


@pytest.mark.parametrize("score, image_t, pixel_t, bad_pixel", [
    (float("nan"), 4.0, 1.0, None), (5.0, float("nan"), 1.0, None), (5.0, 4.0, float("nan"), None),
    (3.0, float("inf"), 1.0, None), (3.0, 4.0, 1.0, float("nan")), (3.0, 4.0, 1.0, float("-inf")),
])
def test_a_nan_anywhere_is_not_inspected_never_ok(score, image_t, pixel_t, bad_pixel):
    m = np.zeros((64, 64), np.float32)
    if bad_pixel is not None:
        m[3, 3] = bad_pixel
    d = decide(score, m, image_t, pixel_t, (64, 64))
    assert d.verdict is Verdict.NOT_INSPECTED and d.reason is Reason.INVALID_SCORE


def test_runtime_config_refuses_non_finite_thresholds(tmp_path):
    for value in (".nan", ".inf", "-.inf"):
        f = tmp_path / "rt.yaml"
        f.write_text(f"bundle: b\nimage_threshold: {value}\ncameras:\n  - {{kind: folder, path: x}}\n")
        with pytest.raises(ConfigError, match="image_threshold"):
            load_runtime_config(f)


def test_runtime_config_errors(tmp_path):
    f = tmp_path / "rt.yaml"
    f.write_text("bundle: b\ncameras:\n  - {kind: folder, path: x, fps: 3}\n")
    with pytest.raises(ConfigError, match="unknown config key 'cameras.0.fps'"):
        load_runtime_config(f)
    f.write_text("bundle: b\ncameras:\n  - {kind: genicam}\n")
    with pytest.raises(ConfigError, match="needs `path`"):
        load_runtime_config(f)
    f.write_text("bundle: b\ncameras: []\n")
    with pytest.raises(ConfigError, match="cameras"):
        load_runtime_config(f)


def test_folder_source_replays_and_ends(synthetic_object):
    src = FolderSource(SourceConfig(kind="folder", path=str(synthetic_object / "test" / "hole"), max_frames=3, loop=True))
    src.open()
    frames = [src.read() for _ in range(3)]
    assert [f.frame_id for f in frames] == [1, 2, 3] and frames[0].image.shape == (96, 96, 3)
    with pytest.raises(SourceEnded):
        src.read()


def test_genicam_source_grabs_from_the_simulated_camera():
    cfg = SourceConfig(kind="genicam", path=VIKY, device="1", max_frames=3,
                       features={"PixelFormat": "Mono8", "ExposureTime": 1000.0, "TriggerMode": "Off"})
    src = GenICamSource(cfg)
    src.open()
    try:
        frames = [src.read() for _ in range(3)]
        assert all(f is not None and f.image.shape == (400, 400) and f.image.dtype == np.uint8 for f in frames)
        assert frames[2].frame_id > frames[0].frame_id
        # Viky has no exposure or trigger: reported, not fatal
        assert set(src.missing_features) == {"ExposureTime", "TriggerMode"}
        with pytest.raises(SourceEnded):
            src.read()
    finally:
        src.close()
    rgba = GenICamSource(SourceConfig(kind="genicam", path=VIKY, device=0, features={"PixelFormat": "RGBa8"}, max_frames=1))
    rgba.open()
    try:
        assert rgba.read().image.shape == (400, 400, 3)  # RGBa8 converted to RGB
    finally:
        rgba.close()


def test_genicam_bad_producer_and_device(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        GenICamSource(SourceConfig(kind="genicam", path=str(tmp_path / "none.cti"))).open()
    src = GenICamSource(SourceConfig(kind="genicam", path=VIKY, device="no-such-serial"))
    with pytest.raises(DataError, match="not found"):
        src.open()
    src.close()


def _hold_the_ring_lock_then_wait(lock, held):
    with lock:
        held.set()
        time.sleep(60)


def test_a_process_killed_while_holding_the_ring_lock_does_not_stop_the_line(tmp_path):
    """A worker SIGKILLed inside the ring's lock froze acquisition and its own replacement for good (a CI run);
    the lock is now released by the kernel when its holder dies."""
    import signal

    ctx = mp.get_context("spawn")
    lock, held = RobustLock(str(tmp_path / "ring.lock")), ctx.Event()
    child = ctx.Process(target=_hold_the_ring_lock_then_wait, args=(lock, held))
    child.start()
    try:
        assert held.wait(60)
        got = threading.Event()
        taker = threading.Thread(target=lambda: (lock.__enter__(), got.set(), lock.__exit__()), daemon=True)
        taker.start()
        assert not got.wait(0.5)  # excluded while the child holds it
        os.kill(child.pid, signal.SIGKILL)
        assert got.wait(10)  # a multiprocessing.Lock would stay taken for ever here
    finally:
        child.kill()
        child.join(10)
        lock.close()


def test_a_process_waiting_for_the_ring_lock_keeps_its_heartbeat(tmp_path):
    """Waiting behind a hung holder is not a hang: the waiter calls on_wait (it renews its heartbeat there), so
    the stall watch kills the holder, not the camera queued behind it (a CI run killed the innocent one first)."""
    ctx = mp.get_context("spawn")
    lock, held = RobustLock(str(tmp_path / "ring.lock")), ctx.Event()
    child = ctx.Process(target=_hold_the_ring_lock_then_wait, args=(lock, held))
    child.start()
    beats: list[float] = []
    lock.on_wait = lambda: beats.append(time.monotonic())
    try:
        assert held.wait(60)
        got = threading.Event()
        taker = threading.Thread(target=lambda: (lock.__enter__(), got.set(), lock.__exit__()), daemon=True)
        taker.start()
        assert not got.wait(1.0)
        assert len(beats) >= 50 and max(np.diff(beats)) < 0.1  # beats all the while, none far apart
        child.kill()
        assert got.wait(10)
        n = len(beats)
        with lock:  # uncontended: no wait, no call
            pass
        assert len(beats) == n
    finally:
        child.kill()
        child.join(10)
        lock.close()


def test_a_worker_holds_every_thread_pool_to_its_share_of_the_cores():
    """Two workers on two cores: each keeps numba's pool, BLAS and OpenMP (faiss) to one thread, or their
    k-NN kernels spread over both cores and slow each other down. Run in a fresh process: the limits are
    process-wide."""
    import subprocess
    import sys

    code = (
        "import os, numpy, numba\n"
        "from threadpoolctl import threadpool_info\n"
        "from sclvi.edge.inference import limit_threads\n"
        "from sclvi.config import ScoringConfig\n"
        "from sclvi.knn.numba_cpu import NumbaPatchScorer\n"
        "limit_threads(1)\n"
        "pools = [p['num_threads'] for p in threadpool_info()]\n"
        "codes = numpy.zeros((20, 4), numpy.float32)\n"
        "kernel = NumbaPatchScorer(codes, numpy.zeros((20, 2), numpy.int16), 1, ScoringConfig(position_window=None))\n"
        "print(numba.get_num_threads(), os.environ['OMP_NUM_THREADS'], max(pools), kernel.threads)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    env["NUMBA_NUM_THREADS"] = "2"  # as on a 2-core box, whatever this one has
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    # numba's pool, OpenMP, every BLAS pool loaded, and the unwindowed k-NN kernel's query threads
    assert out.stdout.split() == ["1", "1", "1", "1"]
