"""The PLC side of the verdict channel: a ROUTER that receives verdicts and acknowledges each one.

`sclvi listen` runs it to watch a line; tests and the demo use it as the PLC. A real PLC bridge does the
same: bind, receive (topic, msgpack body), reply (b"ack", {run, camera, seq}), de-duplicate on (run, camera, seq).
"""

from __future__ import annotations

from typing import Any

import msgpack
import zmq

from sclvi.edge.curve import CurveConfig, as_server
from sclvi.edge.messages import TOPIC_ACK, TOPIC_VERDICT, unpack


class VerdictListener:
    def __init__(self, endpoint: str, ack: bool = True, curve: CurveConfig | None = None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.auth = None
        if curve is not None:  # only stations whose certificate is in curve.authorized are heard
            self.auth = as_server(self.ctx, self.sock, curve)
        self.sock.bind(endpoint)
        self.ack = ack
        self.seen: set[tuple[str | None, str, int]] = set()
        self.duplicates = 0

    def receive(self, timeout_ms: int = 1000) -> dict[str, Any] | None:
        """The next new verdict (acknowledged), or None on timeout. Duplicates are acked and skipped."""
        while self.sock.poll(timeout_ms, zmq.POLLIN):
            ident, *frames = self.sock.recv_multipart()
            topic, body = unpack(frames)
            if topic != TOPIC_VERDICT:
                continue
            key = (body.get("run"), body["camera"], body["seq"])  # seq restarts with every run
            if self.ack:
                self.sock.send_multipart([ident, TOPIC_ACK, msgpack.packb({"run": key[0], "camera": key[1], "seq": key[2]})])
            if key in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(key)
            return body
        return None

    def close(self) -> None:
        self.sock.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


def format_verdict(v: dict[str, Any]) -> str:
    lat = v.get("latency_ms", {}).get("total")
    parts = [f"{v['camera']} seq {v['seq']:>5}", f"{v['verdict']:<13}"]
    if v.get("score") is not None:
        parts.append(f"score {v['score']:.4g} (threshold {v['threshold']:.4g})")
    if v.get("reason"):
        parts.append(f"reason {v['reason']}")
    if v.get("regions"):
        parts.append(f"{len(v['regions'])} region(s), first box {v['regions'][0]['box']}")
    if lat is not None:
        parts.append(f"{lat:.0f} ms")
    return "  ".join(parts)
