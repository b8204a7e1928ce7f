"""Drift watch: OK-part scores against the calibration's, in the heartbeat."""

import zmq

from sclvi.bundle import set_calibration
from sclvi.edge.config import load_runtime_config
from sclvi.edge.drift import DriftWatch, Reference
from sclvi.edge.messages import unpack
from sclvi.edge.supervisor import Runtime
from test_edge_runtime import Collector, replay, runtime_config  # noqa: F401 (fixture)


def test_shift_is_measured_in_calibration_spreads_over_ok_parts_only():
    ref = Reference.from_calibration({"good_scores": {"p50": 1.0, "p99": 1.5}})
    assert ref == Reference(1.0, 0.5)
    assert Reference.from_calibration(None) is None and Reference.from_calibration({"good_scores": {"p50": 1.0}}) is None
    w = DriftWatch(ref, window=10, limit=1.0)
    for _ in range(9):
        w.add("OK", 1.2)
    assert w.status() is None and w.alarm() is None  # not enough parts yet
    w.add("NG", 9.0)  # rejected parts are not part of the good-part distribution
    w.add("OK", float("nan"))
    w.add("NOT_INSPECTED", None)
    assert w.status() is None
    w.add("OK", 1.2)
    s = w.status()
    assert s["window"] == 10 and abs(s["shift"] - 0.4) < 1e-9 and not s["alarm"]
    for _ in range(10):
        w.add("OK", 1.8)  # lamp ageing: every good part scores higher
    assert abs(w.status()["shift"] - 1.6) < 1e-9 and "score drift" in w.alarm()
    for _ in range(10):
        w.add("OK", 0.3)  # exposure up: scores fall, also a drift
    assert w.status()["shift"] < -1 and w.alarm() is not None


def test_runtime_heartbeat_raises_the_drift_alarm(random_bundle, replay):
    # calibrated on good parts that scored ~1e-6: the replayed parts are far from that
    set_calibration(random_bundle, {"image_threshold": 1e6, "pixel_threshold": 1e6,
                                    "good_scores": {"p50": 1e-6, "p99": 2e-6}})
    cfg = runtime_config(random_bundle, [{"kind": "folder", "path": str(replay), "rate_hz": 5, "loop": True,
                                          "max_frames": 14}], heartbeat_s=0.1, drift_window=10,
                         image_threshold=1e6, pixel_threshold=1e6)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
    sub.connect(cfg["telemetry_endpoint"])
    plc = Collector(cfg["verdict_endpoint"])
    plc.start()
    Runtime(load_runtime_config(overrides=cfg)).run()
    verdicts = plc.finish()
    beats = []
    while sub.poll(100):
        beats.append(unpack(sub.recv_multipart())[1])
    sub.close()
    assert len(verdicts) == 14 and sum(v["verdict"] == "OK" for v in verdicts) >= 10
    drift = [b["drift"] for b in beats if b.get("drift")]
    assert drift and drift[-1]["alarm"] and drift[-1]["shift"] > 1 and drift[-1]["window"] == 10
    assert any(any(a.startswith("score drift") for a in b["alarms"]) for b in beats)
