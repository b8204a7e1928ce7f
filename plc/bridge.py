"""The PLC bridge: the ROUTER end of the verdict channel, writing each verdict to the PLC before it
acknowledges it.

    runtime (DEALER) --verdict--> bridge (ROUTER) --Modbus TCP--> PLC
                     <---ack----  (only after the PLC write succeeded)

A verdict the PLC could not take is not acknowledged, so the runtime resends it. Duplicates (resends,
a restart of either side) are recognised by (run, camera, seq) and acknowledged without a second write;
with `state_file` that memory survives a bridge restart. A verdict that overtook an earlier one of its
camera (plc/delivery.py) is held, unacknowledged, for up to `reorder_wait_ms` so that the resent earlier
one is written first; after that it is written, and the earlier one is still written when it comes.
In the server modes the registers live in the bridge, so a verdict written but not yet taken by the PLC
(`new` still set) would die with it: the state file keeps that block and a restarted bridge presents it
again (same run and seq: a PLC that already took it sees a repeat, never a gap). NOT_INSPECTED sets reject
unless configured otherwise. A verdict older than `deadline_ms` is written with the late flag and no reject pulse: its
part has passed the gate, and the PLC's own timeout has rejected it. So is one an earlier run still owed when it
stopped (`carried`: the next run resends it from its owed_dir), outside the current run's order: it neither
waits for nor holds up the current run's verdicts.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from sclvi.edge.curve import as_server
from sclvi.edge.messages import TOPIC_ACK, TOPIC_VERDICT, unpack
from sclvi.plc.config import BridgeConfig
from sclvi.plc.delivery import Arrival, CameraDelivery
from sclvi.plc.modbus import ModbusClientPlc, ModbusServerPlc, Plc, PlcError
from sclvi.plc.registers import BLOCK, FLAG_LATE, FLAG_OVERRUN, NEW, SEQ, Block, u32

log = logging.getLogger("sclvi.plc")

#: The bridge serves the registers itself (they die with it) rather than writing into a PLC's memory.
SERVER_MODES = ("modbus-server", "opcua-server")


def _span(seqs: list[int]) -> str:
    return str(seqs[0]) if len(seqs) == 1 else f"{seqs[0]}-{seqs[-1]}"


def make_plc(cfg: BridgeConfig) -> Plc:
    if cfg.mode == "opcua-server":
        from sclvi.plc.opcua import OpcUaServerPlc

        return OpcUaServerPlc(cfg.host, cfg.port, cfg.cameras, cfg.register_base, cfg.coil_base, cfg.opcua_namespace,
                              cfg.opcua_security, cfg.opcua_certificate, cfg.opcua_private_key, cfg.opcua_trusted_clients)
    if cfg.mode == "modbus-server":
        return ModbusServerPlc(cfg.host, cfg.port, cfg.register_base + BLOCK * len(cfg.cameras),
                               cfg.coil_base + len(cfg.cameras))
    return ModbusClientPlc(cfg.host, cfg.port, cfg.device_id)


class Bridge:
    def __init__(self, cfg: BridgeConfig, plc: Plc | None = None) -> None:
        self.cfg = cfg
        self.plc = plc or make_plc(cfg)
        self.index = {cam: i for i, cam in enumerate(cfg.cameras)}
        self.delivery = self._load_state()  # what was written per camera (survives restarts with state_file)
        self.held_since: dict[str, float] = {}  # camera -> when a verdict that overtook an earlier one was first held
        self.counts = {cam: 0 for cam in cfg.cameras}
        self.last_written: dict[str, int] = {}  # seq of the block each camera last got (for the overrun log)
        self.stats = {"written": 0, "duplicates": 0, "late": 0, "rejects": 0, "plc_errors": 0, "unknown_camera": 0,
                      "overruns": 0, "represented": 0, "held": 0, "out_of_order": 0, "carried": 0}
        self.serves_registers = cfg.mode in SERVER_MODES
        if self.serves_registers:
            self._represent()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.auth = None
        if cfg.curve is not None:  # only stations whose certificate is authorized may send verdicts
            self.auth = as_server(self.ctx, self.sock, cfg.curve)
        self.sock.bind(cfg.verdict_endpoint)
        self._timers: list[threading.Timer] = []

    # -- state across restarts ----------------------------------------------------------------------
    def _load_state(self) -> dict[str, CameraDelivery]:
        if self.cfg.state_file and Path(self.cfg.state_file).is_file():
            try:
                data = json.loads(Path(self.cfg.state_file).read_text())
                return {cam: CameraDelivery.from_json(d) for cam, d in data.items()}
            except (json.JSONDecodeError, OSError, AttributeError, TypeError, ValueError, IndexError) as exc:
                log.warning("ignoring unreadable bridge state %s (%s)", self.cfg.state_file, exc)
        return {}

    def _save_state(self) -> None:
        if self.cfg.state_file:
            tmp = Path(self.cfg.state_file).with_suffix(".tmp")
            tmp.write_text(json.dumps({cam: d.to_json() for cam, d in self.delivery.items()}))
            os.replace(tmp, self.cfg.state_file)

    def _base(self, cam: str) -> int:
        """First register of `cam`'s block."""
        return self.cfg.register_base + BLOCK * self.index[cam]

    def _represent(self) -> None:
        """Our registers start empty: write back each block the PLC had not taken when the bridge stopped."""
        for cam, d in self.delivery.items():
            if cam in self.index and d.block:
                self.plc.write_block(self._base(cam), d.block)
                self.stats["represented"] += 1
                log.warning("%s seq %s was written but not taken by the PLC before the bridge stopped: presented "
                            "again (same run and seq)", cam, u32(d.block, SEQ))

    def _forget_if_taken(self, cam: str) -> None:
        """Forget the kept block of `cam` once the PLC has cleared `new`."""
        d = self.delivery.get(cam)
        if d is not None and d.block is not None and not self.plc.read_register(self._base(cam) + NEW):
            d.block = None
            self._save_state()

    def _hold(self, v: dict[str, Any], arrival: Arrival) -> bool:
        """Whether to leave `v`, which overtook an earlier verdict of its camera, unacknowledged for now: the
        runtime resends the earlier one after its ack timeout, and then this one, in order."""
        cam = v["camera"]
        if arrival is not Arrival.AHEAD:
            if arrival is Arrival.NEXT:  # the gap is closed
                self.held_since.pop(cam, None)
            return False
        now = time.monotonic()
        since = self.held_since.setdefault(cam, now)
        if now - since < self.cfg.reorder_wait_ms / 1000:
            if since == now:
                self.stats["held"] += 1
                log.info("%s seq %d came before an earlier verdict of its run: held up to %.0f ms for the earlier one",
                         cam, v["seq"], self.cfg.reorder_wait_ms)
            return True
        del self.held_since[cam]
        return False

    # -- one verdict --------------------------------------------------------------------------------
    def write(self, v: dict[str, Any], track: bool = True) -> None:
        """Write one verdict to the PLC (raises PlcError); the caller acknowledges afterwards. `track`: record it
        in the camera's delivery order (not for a verdict an earlier run owed, which the runtime resends)."""
        cam = self.index[v["camera"]]
        base = self._base(v["camera"])
        flags = 0
        if self.cfg.handshake:
            end = time.monotonic() + self.cfg.handshake_timeout_ms / 1000
            while self.plc.read_register(base + NEW) and time.monotonic() < end:
                time.sleep(0.002)
            if self.plc.read_register(base + NEW):
                flags |= FLAG_OVERRUN
                self.stats["overruns"] += 1
                log.error("PLC did not take verdict %s seq %s in time: overwriting it with seq %d", v["camera"],
                          self.last_written.get(v["camera"], "?"), v["seq"])
        late = bool(v.get("carried")) or (time.time_ns() - v.get("t_acq_ns", 0)) / 1e6 > self.cfg.deadline_ms
        if late:
            flags |= FLAG_LATE
            self.stats["late"] += 1
            log.warning("verdict %s seq %d is late: written with the late flag, no reject pulse", v["camera"], v["seq"])
        block = Block.encode(v, self.counts[v["camera"]] + 1, self.cfg.not_inspected_rejects, flags)
        self.plc.write_block(base, block.registers)
        self.counts[v["camera"]] += 1
        self.last_written[v["camera"]] = v["seq"]  # not always seq - 1: verdicts can be written out of order
        if block.reject:
            self.stats["rejects"] += 1
            if self.cfg.reject_pulse_ms > 0 and not late:
                self._pulse(self.cfg.coil_base + cam)
        if track:
            skipped = self.delivery.setdefault(v["camera"], CameraDelivery()).written(
                v.get("run"), v["seq"], block.registers if self.serves_registers else None)
            self._save_state()
            if skipped:
                log.warning("%s seq %d written before seq %s, which had not come within reorder_wait_ms: each is "
                            "still written if it comes", v["camera"], v["seq"], _span(skipped))
        self.stats["written"] += 1

    def _pulse(self, coil: int) -> None:
        self.plc.set_coil(coil, True)
        timer = threading.Timer(self.cfg.reject_pulse_ms / 1000, self._coil_off, args=(coil,))
        timer.daemon = True
        timer.start()
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]

    def _coil_off(self, coil: int) -> None:
        try:
            self.plc.set_coil(coil, False)
        except PlcError as exc:
            log.error("reject coil %d could not be reset: %s", coil, exc)

    def handle(self, ident: bytes, frames: list[bytes]) -> dict[str, Any] | None:
        """Write and acknowledge one message; returns the verdict when it was new and written."""
        try:
            topic, v = unpack(frames)
        except Exception as exc:
            log.warning("ignoring a malformed message on the verdict channel: %s", exc)
            return None
        if topic != TOPIC_VERDICT:
            return None
        if v.get("camera") not in self.index:
            self.stats["unknown_camera"] += 1
            log.error("verdict from camera %r, which has no register block (cameras: %s): not acknowledged",
                      v.get("camera"), ", ".join(self.cfg.cameras))
            return None
        delivery = self.delivery.get(v["camera"], CameraDelivery())
        # a verdict an earlier run still owed (resent by the next run) while this camera is on another run:
        # written with the late flag, outside the current run's order (neither held nor holding the next one)
        earlier_run = bool(v.get("carried")) and delivery.run not in (None, v.get("run"))
        arrival = Arrival.NEXT if earlier_run else delivery.arrival(v.get("run"), v["seq"])
        if not earlier_run and self._hold(v, arrival):
            return None
        if arrival is Arrival.LATE:
            self.stats["out_of_order"] += 1
            log.warning("%s seq %d came after a later verdict of its run: written now, out of order", v["camera"], v["seq"])
        new = arrival is not Arrival.DUPLICATE
        if new:
            if earlier_run:
                self.stats["carried"] += 1
                log.warning("%s seq %d of run %s, owed since that run stopped: written late", v["camera"], v["seq"], v.get("run"))
            try:
                self.write(v, track=not earlier_run)
            except PlcError as exc:
                self.stats["plc_errors"] += 1
                log.error("%s: verdict %s seq %d not acknowledged (the runtime resends it)", exc, v["camera"], v["seq"])
                return None
        else:
            self.stats["duplicates"] += 1
        ack = {"run": v.get("run"), "camera": v["camera"], "seq": v["seq"]}
        self.sock.send_multipart([ident, TOPIC_ACK, msgpack.packb(ack)])
        return v if new else None

    def serve(self, stop: threading.Event | None = None, max_verdicts: int | None = None,
              on_verdict: Any = None) -> dict[str, int]:
        """Until `stop` is set (or `max_verdicts` new verdicts were written)."""
        n = 0
        while not (stop is not None and stop.is_set()) and (max_verdicts is None or n < max_verdicts):
            if not self.sock.poll(50):
                continue
            ident, *frames = self.sock.recv_multipart()
            v = self.handle(ident, frames)
            if v is not None:
                n += 1
                if on_verdict is not None:
                    on_verdict(v)
        return dict(self.stats)

    def close(self) -> None:
        for t in self._timers:
            t.join(1)
        if self.serves_registers:  # a block the PLC took need not be presented again
            for cam in self.index:
                try:
                    self._forget_if_taken(cam)
                except PlcError as exc:
                    log.warning("could not read %s's new flag at close (%s): its last block is presented again", cam, exc)
        self.sock.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()
        self.plc.close()
