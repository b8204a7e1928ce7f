"""What the operator view shows, kept current from the runtime's telemetry socket (heartbeats and
previews) by one background thread.

Telemetry is PUB/SUB and may drop a message: the view is for people, never for verdicts (the PLC gets
every verdict over the acknowledged channel). A dropped preview only means one picture fewer.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import zmq

from sclvi.edge.curve import set_client_keys
from sclvi.edge.messages import TOPIC_HEARTBEAT, TOPIC_PREVIEW, unpack


class TelemetryFeed(threading.Thread):
    """Subscribes to `endpoint`; `snapshot()` is the view's state, `version` counts its changes."""

    def __init__(self, endpoint: str, last_parts: int = 12, history: int = 600,
                 curve_keys: tuple[bytes, bytes, bytes] | None = None) -> None:
        super().__init__(name="telemetry-feed", daemon=True)
        self.endpoint = endpoint
        self.curve_keys = curve_keys  # (our public, our secret, the station's public)
        self.parts: deque[dict[str, Any]] = deque(maxlen=last_parts)
        self.history: deque[dict[str, Any]] = deque(maxlen=history)  # counters over time: yield plot
        self.latency: deque[dict[str, float]] = deque(maxlen=history)  # per-stage ms of the previewed parts
        self.heartbeat: dict[str, Any] | None = None
        self.version = 0
        self.lock = threading.Lock()  # the feed thread writes, web requests read
        self.stop_event = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        if self.curve_keys is not None:
            set_client_keys(sub, self.curve_keys)
        for topic in (TOPIC_HEARTBEAT, TOPIC_PREVIEW):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(self.endpoint)
        try:
            while not self.stop_event.is_set():
                if not sub.poll(200):
                    continue
                try:
                    topic, body = unpack(sub.recv_multipart())
                except Exception:  # noqa: BLE001 - a malformed message is skipped, the view keeps going
                    continue
                self._take(topic, body)
        finally:
            sub.close()

    def _take(self, topic: bytes, body: dict[str, Any]) -> None:
        with self.lock:
            if topic == TOPIC_PREVIEW:
                part = {k: v for k, v in body.items() if k not in ("jpeg", "preview")}
                part["image"] = "data:image/jpeg;base64," + base64.b64encode(body.get("jpeg") or b"").decode()
                part["t"] = time.time()
                self.parts.appendleft(part)
                if part.get("latency_ms"):
                    self.latency.append({"t": part["t"], **part["latency_ms"]})
            elif topic == TOPIC_HEARTBEAT:
                self.heartbeat = body
                c = body.get("counters", {})
                self.history.append({"t": body.get("t_ns", time.time_ns()) / 1e9, "ok": c.get("verdict_ok", 0),
                                     "ng": c.get("verdict_ng", 0), "ni": c.get("not_inspected", 0)})
            self.version += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            hb = self.heartbeat or {}
            c = hb.get("counters", {})
            ok, ng, ni = c.get("verdict_ok", 0), c.get("verdict_ng", 0), c.get("not_inspected", 0)
            total = ok + ng + ni
            return {
                "version": self.version, "connected": self.heartbeat is not None,
                "counters": {"ok": ok, "ng": ng, "not_inspected": ni, "total": total,
                             "yield": ok / total if total else None},
                "paused": hb.get("paused"), "alarms": hb.get("alarms", []), "drift": hb.get("drift"),
                "parts": list(self.parts), "history": list(self.history),
                "latency": latency_summary(list(self.latency)),
            }

    def stop(self) -> None:
        self.stop_event.set()


def latency_summary(samples: list[dict[str, float]], trend_points: int = 120) -> dict[str, Any]:
    """Per stage, the last, median, 95th percentile and worst latency over the window (previewed parts only:
    a sample, at the preview rate), and the total's recent trend for the sparkline. Why: one part's figure
    says nothing about the tail that makes a line miss its takt time."""
    stages = list(dict.fromkeys(k for s in samples for k in s if k != "t"))
    table = {}
    for stage in stages:
        v = np.array([s[stage] for s in samples if stage in s], dtype=float)
        table[stage] = {"last": float(v[-1]), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
                        "max": float(v.max())}
    trend = [[s["t"], s["total"]] for s in samples[-trend_points:] if "total" in s]
    return {"n": len(samples), "stages": table, "trend": trend}
