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
import time
from collections import OrderedDict
from typing import Any

import msgpack
import zmq

from sclvi.edge import curve, endpoints
from sclvi.edge.config import RuntimeConfig
from sclvi.edge.drift import DriftWatch, Reference
from sclvi.edge.journal import OwedVerdicts, SeqGaps, VerdictJournal
from sclvi.edge.messages import (
    SCHEMA, TOPIC_ACK, TOPIC_HEARTBEAT,
    TOPIC_PREVIEW, TOPIC_VERDICT, Reason, Verdict, pack, unpack, verdict_message,
)
from sclvi.edge.shared import Shared

log = logging.getLogger("sclvi.edge.publisher")


def _ack_key(body: Any, run_id: str, owed_runs: set[str]) -> tuple[str, str, int] | None:
    """(run, camera, seq) of a well-formed ack for this run or a run whose verdicts it resends (`owed_runs`);
    None for anything else (logged, never fatal)."""
    if not isinstance(body, dict):
        return None
    camera, seq, run = body.get("camera"), body.get("seq"), body.get("run", run_id)
    if not isinstance(camera, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return (run, camera, seq) if run == run_id or run in owed_runs else None


def publisher_main(cfg: RuntimeConfig, shared: Shared, row: int, drift_reference: Reference | None) -> None:
    from sclvi.edge.logs import child_process_setup

    child_process_setup()
    ctx = zmq.Context()
    journal = VerdictJournal(shared.journal_path)
    sockets: list[zmq.Socket] = []
    auth = None
    try:
        dealer = ctx.socket(zmq.DEALER)
        sockets.append(dealer)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.IMMEDIATE, 1)  # no queueing towards a peer that is not connected
        if cfg.curve is not None:
            curve.as_client(dealer, cfg.curve)
        dealer.connect(cfg.verdict_endpoint)
        pull = ctx.socket(zmq.PULL)  # verdicts from acquisition, workers and the supervisor
        sockets.append(pull)
        pull.setsockopt(zmq.LINGER, 0)
        pull.bind(shared.results_endpoint)
        pub = None
        if cfg.telemetry_endpoint:
            pub = ctx.socket(zmq.PUB)
            sockets.append(pub)
            pub.setsockopt(zmq.LINGER, 0)
            if cfg.curve is not None:
                auth = curve.as_server(ctx, pub, cfg.curve)
            pub.bind(cfg.telemetry_endpoint)
            endpoints.restrict(cfg.telemetry_endpoint)
        _serve(cfg, shared, row, dealer, pull, pub, journal, drift_reference)
    finally:
        shared.alive_until[shared.heartbeat_index("publisher")] = 0  # exiting is no hang
        for sock in sockets:
            sock.close()
        if auth is not None:
            auth.stop()
        ctx.term()


def _serve(cfg: RuntimeConfig, shared: Shared, row: int, dealer: zmq.Socket, pull: zmq.Socket, pub: zmq.Socket | None,
           journal: VerdictJournal, drift_reference: Reference | None) -> None:
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    poller.register(pull, zmq.POLLIN)
    count = shared.counters
    replayed, high = journal.replay()  # what a killed predecessor still owed the PLC
    owed = OwedVerdicts(cfg.owed_dir) if cfg.owed_dir else None
    carried = owed.load(cfg.max_pending) if owed else []  # what earlier runs still owe it
    owed_runs = {msg["run"] for msg in carried}
    gaps = SeqGaps(high)
    grace_s = cfg.deadline_ms / 1000 + max(2.0, 4 * cfg.ack_timeout_ms / 1000)
    pending: OrderedDict[tuple[str, str, int], list[Any]] = OrderedDict()  # (run, camera, seq)
    ack_timeout = cfg.ack_timeout_ms / 1000
    next_beat = time.monotonic()
    flushing_since: float | None = None
    drained_since: float | None = None
    drift = DriftWatch(drift_reference, cfg.drift_window, cfg.drift_limit)

    def send(key: tuple[str, str, int], frames: list[bytes], first: bool) -> None:
        try:
            dealer.send_multipart(frames, flags=zmq.NOBLOCK)
            count.add(row, "sent" if first else "resends")
        except zmq.Again:
            count.add(row, "send_failures")
        pending[key][1] = time.monotonic()

    def publish(msg: dict[str, Any], journaled: bool = False) -> None:
        """Send a verdict and keep it pending until acknowledged; `journaled`: already on disk (a replayed or
        carried one: its run id is set, and it was counted as sent when first sent)."""
        if not journaled:
            msg["run"] = shared.run_id
            msg["t_sent_ns"] = time.time_ns()
            journal.verdict(msg)  # on disk (page cache) before it can be sent
        key = (msg.get("run", shared.run_id), msg["camera"], msg["seq"])
        frames = pack(TOPIC_VERDICT, msg)
        pending[key] = [frames, 0.0, time.monotonic()]  # frames, last sent, first sent
        send(key, frames, first=not journaled)
        while len(pending) > cfg.max_pending:
            lost, _ = pending.popitem(last=False)
            count.add(row, "send_failures")
            log.error("verdict channel: dropping unacknowledged verdict %s (more than %d pending)", lost, cfg.max_pending)

    beat = shared.heartbeat_index("publisher")
    if replayed:
        log.warning("publisher restarted: resending %d unacknowledged verdicts from the journal", len(replayed))
    for msg in replayed.values():
        publish(msg, journaled=True)
    for msg in carried:
        publish(msg, journaled=True)
    while True:
        shared.beat(beat, cfg.stall_timeout_s)  # every round takes milliseconds: a stuck one is a hang
        events = dict(poller.poll(5))
        while pull in events and pull.poll(0):  # drain new verdicts
            msg = msgpack.unpackb(pull.recv(), raw=False)
            if msg.get("flush"):
                flushing_since = flushing_since or time.monotonic()
                continue
            if msg.get("preview"):  # telemetry for the operator view: forwarded, never journaled or resent
                if pub is not None:
                    try:
                        pub.send_multipart(pack(TOPIC_PREVIEW, msg), flags=zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                continue
            if not gaps.seen(msg["camera"], msg["seq"]):
                log.error("late verdict for %s seq %d dropped: it was already sent as NOT_INSPECTED (lost)",
                          msg["camera"], msg["seq"])
                count.add(row, "late_verdicts")
                continue
            publish(msg)
            drift.add(msg.get("verdict"), msg.get("score"))
        while dealer.poll(0, zmq.POLLIN):
            try:
                topic, body = unpack(dealer.recv_multipart())
                key = _ack_key(body, shared.run_id, owed_runs) if topic == TOPIC_ACK else None
                if key is None:
                    raise ValueError(f"not an ack of this run or of one it resends: {str(body)[:120]}")
            except Exception as exc:  # whatever the bridge sends, the publisher keeps going
                count.add(row, "bad_acks")
                log.warning("ignoring a malformed message from the PLC bridge: %s", exc)
                continue
            if pending.pop(key, None) is not None:
                if key[0] == shared.run_id:
                    journal.ack(*key[1:])
                else:
                    owed.ack(*key)
                count.add(row, "acks")
        now = time.monotonic()
        drained = flushing_since is not None and not pull.poll(0)
        drained_since = (drained_since or now) if drained else None
        for cam, counter in zip(shared.camera_ids, shared.seq):
            gaps.expect(cam, counter.value, now)
        # after the flush every verdict has arrived: whatever is still missing is lost
        for cam, seq in gaps.overdue(0.2 if drained_since and now - drained_since > 0.2 else grace_s, now):
            log.error("no verdict for %s seq %d reached the publisher: sending NOT_INSPECTED (lost)", cam, seq)
            count.add(row, "not_inspected")
            count.add(row, f"nis_{Reason.LOST.value}")
            publish(verdict_message(cam, seq, -1, 0, Verdict.NOT_INSPECTED, reason=Reason.LOST))
        for key, item in list(pending.items()):
            if now - item[1] > ack_timeout:
                send(key, item[0], first=False)
        count.set(row, "pending", len(pending))
        journal.maybe_compact(pending, gaps.high)
        if pub is not None and now >= next_beat:
            next_beat = now + cfg.heartbeat_s
            pub.send_multipart(pack(TOPIC_HEARTBEAT, heartbeat(shared, pending, ack_timeout, drift)))
        if drained_since is not None and not gaps.missing:
            if not pending or now - flushing_since > max(4 * ack_timeout, 1.0):
                own = sum(key[0] == shared.run_id for key in pending)
                if pending:
                    log.error("shutdown: %d verdicts were never acknowledged by the PLC bridge", len(pending))
                if own and owed is not None:
                    kept = owed.keep(journal, shared.run_id)
                    log.error("the %d of this run are kept in %s: the next run resends them", own, kept)
                elif own:
                    log.error("owed_dir is not set, so no later run can resend the %d of this run: set it in the "
                              "runtime config", own)
                if owed is not None:
                    owed.close()
                journal.close(remove=not own)
                return


def heartbeat(shared: Shared, pending: OrderedDict, ack_timeout: float, drift: DriftWatch) -> dict[str, Any]:
    totals = shared.counters.totals()
    alarms = []
    drift_status = drift.status()  # one median per heartbeat, for the figures and the alarm
    drift_alarm = drift.alarm(drift_status)
    if drift_alarm:
        alarms.append(drift_alarm)
    oldest = next(iter(pending.values()), None)
    if oldest is not None and time.monotonic() - oldest[2] > 4 * ack_timeout:
        alarms.append(f"verdict channel: {len(pending)} verdicts unacknowledged")
    for name in ("send_failures", "not_inspected", "inference_errors", "camera_reconnects", "worker_restarts"):
        if totals[name]:
            alarms.append(f"{name}: {totals[name]}")
    depths = {"pending_verdicts": len(pending)}
    return {"schema": SCHEMA, "t_ns": time.time_ns(), "counters": totals, "queue_depths": depths,
            "paused": shared.paused.is_set(), "alarms": alarms, "drift": drift_status}
