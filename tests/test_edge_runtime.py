"""The edge runtime as a whole: real processes, shared memory, ZeroMQ sockets on 127.0.0.1.

Every grabbed frame must get exactly one verdict, whatever happens: late frames, a full ring, a
crashed worker, a PLC bridge that joins late, a pause, a SIGTERM.
"""

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
import zmq

import genicam
from sclvi.edge.config import load_runtime_config
from sclvi.edge.endpoints import free_ports
from sclvi.edge.listener import VerdictListener
from sclvi.edge.messages import unpack
from sclvi.edge.supervisor import Runtime
from sclvi.errors import ConfigError

VIKY = str(Path(genicam.__file__).parent / "viky.cti")


@pytest.fixture()
def replay(tmp_path, synthetic_object):
    """A flat folder of 6 test images (good and defective) to replay as a camera."""
    folder = tmp_path / "replay"
    folder.mkdir()
    files = sorted((synthetic_object / "test" / "good").iterdir())[:3] + sorted((synthetic_object / "test" / "hole").iterdir())[:2] \
        + sorted((synthetic_object / "test" / "spot").iterdir())[:1]
    for i, f in enumerate(files):
        shutil.copy(f, folder / f"{i:02d}_{f.parent.name}.png")
    return folder


def runtime_config(bundle, cameras, ports=None, **extra):
    """A station's config; `ports` (verdict, telemetry, control): given by a caller that needs one more, an operator
    view's, taken in the same free_ports call so none can come back twice."""
    verdict, telemetry, control = ports or free_ports(3)
    return {
        "bundle": str(bundle.path), "cameras": cameras, "workers": 1, "threads_per_worker": 1,
        "image_threshold": 1.0, "pixel_threshold": 1.0, "deadline_ms": 20000,
        "verdict_endpoint": f"tcp://127.0.0.1:{verdict}", "telemetry_endpoint": f"tcp://127.0.0.1:{telemetry}",
        "control_endpoint": f"tcp://127.0.0.1:{control}", "ack_timeout_ms": 100, **extra,
    }


class Collector(threading.Thread):
    """The PLC: collects verdicts (optionally joining late) until told to stop."""

    def __init__(self, endpoint, delay_s=0.0, ack=True):
        super().__init__(daemon=True)
        self.endpoint, self.delay_s, self.ack = endpoint, delay_s, ack
        self.verdicts, self.done, self.listener = [], threading.Event(), None

    def run(self):
        time.sleep(self.delay_s)
        self.listener = VerdictListener(self.endpoint, ack=self.ack)
        while not self.done.is_set():
            v = self.listener.receive(100)
            if v is not None:
                self.verdicts.append(v)
        self.listener.close()

    def finish(self, settle_s=0.5):
        time.sleep(settle_s)
        self.done.set()
        self.join(5)
        return self.verdicts


def _run(cfg_dict, delay_s=0.0):
    plc = Collector(cfg_dict["verdict_endpoint"], delay_s)
    plc.start()
    totals = Runtime(load_runtime_config(overrides=cfg_dict)).run()
    return totals, plc.finish()


def test_every_frame_gets_one_verdict_with_latencies(random_bundle, replay):
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 10}])
    totals, verdicts = _run(cfg)
    assert sorted(v["seq"] for v in verdicts) == [1, 2, 3, 4, 5, 6]
    assert {v["verdict"] for v in verdicts} <= {"OK", "NG"}
    assert totals["verdict_ok"] + totals["verdict_ng"] == 6 and totals["acks"] == 6
    lat = verdicts[0]["latency_ms"]
    assert {"acquire", "queue", "preprocess", "embed", "knn", "fuse", "decide", "total"} <= set(lat)
    assert all(v["threshold"] == 1.0 and v["schema"] == 1 for v in verdicts)


def _start(cfg):
    """The runtime in a background thread; returns (thread, dict filled with its final counters)."""
    rt = Runtime(load_runtime_config(overrides=cfg))
    result = {}
    t = threading.Thread(target=lambda: result.update(rt.run()))
    t.start()
    return t, result


def _ask(req, **kw):
    req.send(json.dumps(kw).encode())
    return json.loads(req.recv())


def test_a_late_plc_bridge_still_gets_every_verdict(random_bundle, replay):
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 3}])
    t, result = _start(cfg)
    req = zmq.Context.instance().socket(zmq.REQ)
    req.connect(cfg["control_endpoint"])
    while _ask(req, cmd="stats")["send_failures"] < 2:  # verdicts exist, nobody is listening yet
        time.sleep(0.1)
    req.close()
    plc = Collector(cfg["verdict_endpoint"])  # slow joiner: PUB/SUB would have lost those verdicts
    plc.start()
    t.join(120)
    verdicts = plc.finish()
    assert sorted(v["seq"] for v in verdicts) == [1, 2, 3, 4, 5, 6]
    assert result["resends"] > 0 and result["acks"] == 6


def test_deadline_misses_become_not_inspected_exactly_once(random_bundle, replay):
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay)}], deadline_ms=1)
    totals, verdicts = _run(cfg)
    assert sorted(v["seq"] for v in verdicts) == [1, 2, 3, 4, 5, 6]
    assert all(v["verdict"] == "NOT_INSPECTED" and v["reason"] == "deadline" for v in verdicts)
    assert totals["nis_deadline"] == 6 and totals["verdict_ok"] + totals["verdict_ng"] == 0
    assert totals["late_results"] <= 6  # frames a worker had started; queued ones were dropped unprocessed


def test_a_full_ring_rejects_frames_instead_of_blocking(random_bundle, replay):
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "loop": True, "max_frames": 30}], ring_slots=1)
    totals, verdicts = _run(cfg)
    assert sorted(v["seq"] for v in verdicts) == list(range(1, 31))
    full = [v for v in verdicts if v.get("reason") == "ring_full"]
    assert full and totals["nis_ring_full"] == len(full) == totals["ring_full"]


def run_and_kill(cfg, pick, after=2, sig=signal.SIGKILL):
    """Run the runtime with a PLC stand-in; send `sig` (SIGKILL: dies, SIGSTOP: hangs) to the child
    `pick(status)` names once `after` verdicts arrived (while it is working). Returns (verdicts, final counters)."""
    import os

    plc = Collector(cfg["verdict_endpoint"])
    plc.start()
    t, result = _start(cfg)
    req = zmq.Context.instance().socket(zmq.REQ)
    req.connect(cfg["control_endpoint"])
    deadline = time.time() + 60
    while len(plc.verdicts) < after and time.time() < deadline:
        time.sleep(0.05)
    os.kill(pick(_ask(req, cmd="status")), sig)
    t.join(120)
    req.close()
    return plc.finish(), result


def test_crashed_worker_is_restarted_and_no_frame_is_lost(random_bundle, replay):
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 4, "loop": True, "max_frames": 16}])
    verdicts, result = run_and_kill(cfg, lambda st: st["workers"][0]["pid"])
    assert sorted(v["seq"] for v in verdicts) == list(range(1, 17))
    assert result["worker_restarts"] == 1
    crashed = [v for v in verdicts if v.get("reason") == "worker_crash"]
    assert len(crashed) == result["nis_worker_crash"] <= 1  # the frame it held, if any


@pytest.mark.parametrize("who", ["worker", "acquisition", "publisher"])
def test_a_hung_process_is_killed_and_restarted_and_no_frame_is_lost(random_bundle, replay, who):
    """A process stopped dead (SIGSTOP: what a hang in a camera driver or a lock looks like) is alive to
    is_alive(), so only its missed heartbeats show it. Before the stall watch the line stood still for good,
    status "running". A hung publisher takes with it the verdicts already in its socket (NOT_INSPECTED lost, so
    rejected: in CI 9 of 16 frames while it hung), so that case runs longer to show the line going on after."""
    frames = 32 if who == "publisher" else 16
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 4, "loop": True, "max_frames": frames}],
                         stall_timeout_s=2)
    pick = {"worker": lambda st: st["workers"][0]["pid"], "acquisition": lambda st: st["cameras"][0]["pid"],
            "publisher": lambda st: st["publisher"]["pid"]}[who]
    verdicts, result = run_and_kill(cfg, pick, sig=signal.SIGSTOP)
    seqs = sorted(v["seq"] for v in verdicts)
    # every frame has exactly one verdict; a restarted replay source counts its frames afresh
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= frames
    assert result["stalls"] == 1 and result[f"{who}_restarts"] == 1
    assert sum(v["verdict"] != "NOT_INSPECTED" for v in verdicts) >= 8  # the line went on after the restart


TOKEN = "s3cret-token-for-tests"


def test_control_socket_pause_threshold_reload(random_bundle, replay):
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 5, "loop": True, "max_frames": 20}],
                         control_token=TOKEN)
    plc = Collector(cfg["verdict_endpoint"])
    plc.start()
    t, _ = _start(cfg)
    req = zmq.Context.instance().socket(zmq.REQ)
    req.connect(cfg["control_endpoint"])

    def ask(**kw):
        return _ask(req, token=TOKEN, **kw)

    def wait_for(n):
        end = time.time() + 60
        while len(plc.verdicts) < n and time.time() < end:
            time.sleep(0.05)

    wait_for(2)
    assert ask(cmd="set_threshold", image=1e9)["thresholds"]["image"] == 1e9
    for bad in ("nan", "Infinity", "x", None):  # refused whole: a bad pixel value leaves the image threshold alone
        reply = ask(cmd="set_threshold", image=5.0, pixel=bad)
        assert reply["ok"] is False and "finite" in reply["error"]
    assert ask(cmd="status")["thresholds"]["image"] == 1e9
    wait_for(len(plc.verdicts) + 3)
    assert ask(cmd="pause")["paused"] is True
    wait_for(len(plc.verdicts) + 3)
    assert ask(cmd="resume")["paused"] is False
    assert ask(cmd="reload") == {"ok": True, "generation": 1}
    assert ask(cmd="status")["thresholds"]["image"] == 1.0  # reload re-read the configured threshold
    assert "unknown command" in ask(cmd="dance")["error"]
    # a local process without the token, or with a wrong one, changes nothing; hostile messages get an error
    # reply and the line goes on
    assert "wrong token" in _ask(req, cmd="pause")["error"] and "wrong token" in _ask(req, cmd="pause", token="x" * 20)["error"]
    for raw in (b"[1]", b"1", b'"x"', b"\xff\xfe", b"{"):
        req.send(raw)
        assert json.loads(req.recv())["ok"] is False
    req.send_multipart([b'{"cmd": "pause"}', b"more"])
    assert "one message part" in json.loads(req.recv())["error"]
    assert ask(cmd="status")["paused"] is False
    t.join(120)
    req.close()
    verdicts = plc.finish()
    assert sorted(v["seq"] for v in verdicts) == list(range(1, 21))
    assert any(v.get("reason") == "paused" for v in verdicts)
    assert any(v["verdict"] == "OK" and v["threshold"] == 1e9 for v in verdicts)


def test_line_changing_commands_are_refused_without_a_configured_token(random_bundle, replay):
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 5, "max_frames": 6}])
    plc = Collector(cfg["verdict_endpoint"])
    plc.start()
    t, _ = _start(cfg)
    req = zmq.Context.instance().socket(zmq.REQ)
    req.connect(cfg["control_endpoint"])
    for cmd in ("set_threshold", "pause", "resume", "reload"):
        assert "set control_token" in _ask(req, cmd=cmd, image=0.0)["error"]
    assert _ask(req, cmd="status")["thresholds"]["image"] == 1.0  # read-only commands stay open
    t.join(120)
    req.close()
    assert len(plc.finish()) == 6


def test_unacknowledged_verdicts_are_resent_and_alarmed(random_bundle, replay):
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 4}], heartbeat_s=0.2)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
    sub.connect(cfg["telemetry_endpoint"])
    plc = Collector(cfg["verdict_endpoint"], ack=False)  # a bridge that never acknowledges
    plc.start()
    totals = Runtime(load_runtime_config(overrides=cfg)).run()
    plc.finish(0)
    beats = []
    while sub.poll(100):
        beats.append(unpack(sub.recv_multipart())[1])
    sub.close()
    assert totals["resends"] > 0 and totals["acks"] == 0
    assert any(any("unacknowledged" in a for a in b["alarms"]) for b in beats)


def test_uncalibrated_bundle_is_refused(random_bundle, replay):
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay)}])
    cfg.pop("image_threshold")
    with pytest.raises(ConfigError, match="sclvi calibrate"):
        Runtime(load_runtime_config(overrides=cfg))


def test_sigterm_shuts_down_cleanly_and_releases_the_genicam_camera(tmp_path, random_bundle):
    cfg = runtime_config(random_bundle, [{"kind": "genicam", "camera_id": "viky", "path": VIKY, "device": "2",
                                          "features": {"PixelFormat": "Mono8"}}])
    (tmp_path / "rt.yaml").write_text(yaml.safe_dump(cfg))
    plc = Collector(cfg["verdict_endpoint"])
    plc.start()
    proc = subprocess.Popen([sys.executable, "-m", "sclvi", "run", str(tmp_path / "rt.yaml")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while len(plc.verdicts) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    verdicts = plc.finish()
    assert proc.returncode == 0, err[-2000:]
    totals = json.loads(out.strip().splitlines()[-1])
    assert totals["frames_grabbed"] == len(verdicts) >= 5  # in-flight frames got their verdicts too
    assert sorted(v["seq"] for v in verdicts) == list(range(1, len(verdicts) + 1))
    from sclvi.edge.config import SourceConfig
    from sclvi.edge.sources import GenICamSource

    again = GenICamSource(SourceConfig(kind="genicam", path=VIKY, device="2", max_frames=1))
    again.open()  # the runtime released the camera
    try:
        assert again.read() is not None
    finally:
        again.close()
