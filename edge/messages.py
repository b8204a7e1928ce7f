"""The versioned message schema of the verdict channel and telemetry (multipart: topic, msgpack).

Verdict fields: schema, run (this runtime start: seq restarts at 1 with a new run), camera, seq (per
camera and run, no gaps), frame_id (the camera's), t_acq_ns, trigger
(camera counter, when it has one), verdict (OK / NG / NOT_INSPECTED), reason (why NOT_INSPECTED),
score, threshold, regions [{box: [x0, y0, x1, y1] in frame pixels, area, peak}], latency_ms per stage.
Acknowledgement (PLC -> runtime): topic b"ack", {run, camera, seq}. De-duplicate on (run, camera, seq).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import msgpack

SCHEMA = 1
TOPIC_VERDICT = b"verdict"
TOPIC_ACK = b"ack"
TOPIC_HEARTBEAT = b"heartbeat"
TOPIC_PREVIEW = b"preview"  # telemetry: a JPEG of a recent part with its heatmap (the operator view)


class Verdict(str, Enum):
    OK = "OK"
    NG = "NG"
    NOT_INSPECTED = "NOT_INSPECTED"


class Reason(str, Enum):
    DEADLINE = "deadline"
    RING_FULL = "ring_full"
    ERROR = "error"
    WORKER_CRASH = "worker_crash"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    FRAME_TOO_LARGE = "frame_too_large"
    INVALID_SCORE = "invalid_score"  # NaN/inf score, map or threshold: never a silent OK
    BAD_FRAME = "bad_frame"  # a buffer with no image or a pixel format we cannot read
    LOST = "lost"  # a sequence number whose verdict never reached the publisher


def verdict_message(
    camera: str, seq: int, frame_id: int, t_acq_ns: int, verdict: Verdict, *, trigger: int | None = None,
    score: float | None = None, threshold: float | None = None, regions: list[dict[str, Any]] | None = None,
    latency_ms: dict[str, float] | None = None, reason: Reason | None = None,
) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "camera": camera, "seq": int(seq), "frame_id": int(frame_id), "t_acq_ns": int(t_acq_ns),
        "trigger": trigger, "verdict": verdict.value, "reason": reason.value if reason else None,
        "score": score, "threshold": threshold, "regions": regions or [], "latency_ms": latency_ms or {},
    }


def pack(topic: bytes, body: dict[str, Any]) -> list[bytes]:
    return [topic, msgpack.packb(body, use_bin_type=True)]


def unpack(frames: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    if len(frames) != 2:
        raise ValueError(f"expected a 2-part message (topic, body), got {len(frames)} parts")
    body = msgpack.unpackb(frames[1], raw=False)
    if not isinstance(body, dict):
        raise ValueError(f"message body must be a map, got {type(body).__name__}")
    if body.get("schema", SCHEMA) != SCHEMA:
        raise ValueError(f"message schema {body.get('schema')} is not {SCHEMA}")
    return frames[0], body
