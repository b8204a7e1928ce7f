"""Publisher process: the reliable verdict channel to the PLC, and telemetry.

Verdicts go out on a DEALER socket connected to the PLC bridge's ROUTER. Every verdict stays pending
until the bridge acknowledges (camera, seq); unacknowledged ones are resent after `ack_timeout_ms`.
Sends never block (ZMQ_IMMEDIATE + NOBLOCK): while the PLC is unreachable, verdicts wait in `pending`
and every failed send is counted. Nothing is dropped silently: past `max_pending` the oldest are
dropped with an error log and counted as send failures (an alarm in the heartbeat).
Telemetry (heartbeats with counters, queue depths, alarms) goes out on a PUB socket: it may drop.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import OrderedDict
from typing import Any

import msgpack
import zmq

from sclvi.edge.config import RuntimeConfig
from sclvi.edge.messages import SCHEMA, TOPIC_ACK, TOPIC_HEARTBEAT, TOPIC_VERDICT, pack, unpack
from sclvi.edge.shared import Shared

log = logging.getLogger("sclvi.edge.publisher")


def publisher_main(cfg: RuntimeConfig, shared: Shared, row: int) -> None:
    from sclvi.edge.logs import setup_child_logging

    setup_child_logging()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IMMEDIATE, 1)  # no queueing towards a peer that is not connected
    dealer.connect(cfg.verdict_endpoint)
    pull = ctx.socket(zmq.PULL)  # verdicts from acquisition, workers and the supervisor
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(shared.results_endpoint)
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    poller.register(pull, zmq.POLLIN)
    pub = None
    if cfg.telemetry_endpoint:
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.bind(cfg.telemetry_endpoint)
    count = shared.counters
    pending: OrderedDict[tuple[str, int], list[Any]] = OrderedDict()
    ack_timeout = cfg.ack_timeout_ms / 1000
    next_beat = time.monotonic()
    flushing_since: float | None = None

    def send(key: tuple[str, int], frames: list[bytes], first: bool) -> None:
        try:
            dealer.send_multipart(frames, flags=zmq.NOBLOCK)
            count.add(row, "sent" if first else "resends")
        except zmq.Again:
            count.add(row, "send_failures")
        pending[key][1] = time.monotonic()

    try:
        while True:
            events = dict(poller.poll(5))
            while pull in events and pull.poll(0):  # drain new verdicts
                msg = msgpack.unpackb(pull.recv(), raw=False)
                if msg.get("flush"):
                    flushing_since = flushing_since or time.monotonic()
                    continue
                msg["t_sent_ns"] = time.time_ns()
                key = (msg["camera"], msg["seq"])
                frames = pack(TOPIC_VERDICT, msg)
                pending[key] = [frames, 0.0, time.monotonic()]  # frames, last sent, first sent
                send(key, frames, first=True)
                while len(pending) > cfg.max_pending:
                    lost, _ = pending.popitem(last=False)
                    count.add(row, "send_failures")
                    log.error("verdict channel: dropping unacknowledged verdict %s (more than %d pending)", lost, cfg.max_pending)
            while dealer.poll(0, zmq.POLLIN):
                try:
                    topic, body = unpack(dealer.recv_multipart())
                except ValueError as exc:
                    log.warning("ignoring a malformed message from the PLC bridge: %s", exc)
                    continue
                if topic == TOPIC_ACK and pending.pop((body.get("camera"), body.get("seq")), None) is not None:
                    count.add(row, "acks")
            now = time.monotonic()
            for key, item in list(pending.items()):
                if now - item[1] > ack_timeout:
                    send(key, item[0], first=False)
            count.set(row, "pending", len(pending))
            if pub is not None and now >= next_beat:
                next_beat = now + cfg.heartbeat_s
                pub.send_multipart(pack(TOPIC_HEARTBEAT, heartbeat(shared, pending, ack_timeout)))
            if flushing_since is not None and not pull.poll(0):
                if not pending or now - flushing_since > max(4 * ack_timeout, 1.0):
                    if pending:
                        log.error("shutdown: %d verdicts were never acknowledged by the PLC bridge", len(pending))
                    return
    finally:
        pull.close()
        dealer.close()
        if pub is not None:
            pub.close()
        ctx.term()


def heartbeat(shared: Shared, pending: OrderedDict, ack_timeout: float) -> dict[str, Any]:
    totals = shared.counters.totals()
    alarms = []
    oldest = next(iter(pending.values()), None)
    if oldest is not None and time.monotonic() - oldest[2] > 4 * ack_timeout:
        alarms.append(f"verdict channel: {len(pending)} verdicts unacknowledged")
    for name in ("send_failures", "not_inspected", "inference_errors", "camera_reconnects", "worker_restarts"):
        if totals[name]:
            alarms.append(f"{name}: {totals[name]}")
    depths = {"pending_verdicts": len(pending)}
    return {"schema": SCHEMA, "t_ns": time.time_ns(), "counters": totals, "queue_depths": depths,
            "paused": shared.paused.is_set(), "alarms": alarms}
