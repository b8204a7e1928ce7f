"""The PLC bridge: the ROUTER end of the verdict channel, writing each verdict to the PLC before it
acknowledges it.

    runtime (DEALER) --verdict--> bridge (ROUTER) --Modbus TCP--> PLC
                     <---ack----  (only after the PLC write succeeded)

A verdict the PLC could not take is not acknowledged, so the runtime resends it. Duplicates (resends,
a restart of either side) are recognised by (run, camera, seq) and acknowledged without a second write;
with `state_file` that memory survives a bridge restart. In the server modes the registers live in the
bridge, so a verdict written but not yet taken by the PLC (`new` still set) would die with it: the state
file keeps that block and a restarted bridge presents it again (same run and seq: a PLC that already took
it sees a repeat, never a gap). NOT_INSPECTED sets reject unless configured
otherwise. A verdict older than `deadline_ms` is written with the late flag and no reject pulse: its
part has passed the gate, and the PLC's own timeout has rejected it.
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
from sclvi.plc.modbus import ModbusClientPlc, ModbusServerPlc, Plc, PlcError
from sclvi.plc.registers import BLOCK, FLAG_LATE, FLAG_OVERRUN, NEW, Block

log = logging.getLogger("sclvi.plc")

#: The bridge serves the registers itself (they die with it) rather than writing into a PLC's memory.
SERVER_MODES = ("modbus-server", "opcua-server")


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
        # camera -> [run, seq] last written, + its registers while the PLC has not taken it (server modes)
        self.last = self._load_state()
        self.counts = {cam: 0 for cam in cfg.cameras}
        self.stats = {"written": 0, "duplicates": 0, "late": 0, "rejects": 0, "plc_errors": 0, "unknown_camera": 0,
                      "overruns": 0, "represented": 0}
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
    def _load_state(self) -> dict[str, list[Any]]:
        if self.cfg.state_file and Path(self.cfg.state_file).is_file():
            try:
                return json.loads(Path(self.cfg.state_file).read_text())
            except (json.JSONDecodeError, OSError) as exc:
                log.warning("ignoring unreadable bridge state %s (%s)", self.cfg.state_file, exc)
        return {}

    def _save_state(self) -> None:
        if self.cfg.state_file:
            tmp = Path(self.cfg.state_file).with_suffix(".tmp")
            tmp.write_text(json.dumps(self.last))
            os.replace(tmp, self.cfg.state_file)

    def _base(self, cam: str) -> int:
        """First register of `cam`'s block."""
        return self.cfg.register_base + BLOCK * self.index[cam]

    def _kept_block(self, cam: str) -> list[int] | None:
        """The registers of `cam`'s last verdict while the PLC has not been seen taking it (server modes)."""
        last = self.last.get(cam)
        return last[2] if last is not None and len(last) > 2 else None

    def _represent(self) -> None:
        """Our registers start empty: write back each block the PLC had not taken when the bridge stopped."""
        for cam in self.last:
            block = self._kept_block(cam) if cam in self.index else None
            if block:
                self.plc.write_block(self._base(cam), block)
                self.stats["represented"] += 1
                log.warning("%s seq %s was written but not taken by the PLC before the bridge stopped: presented "
                            "again (same run and seq)", cam, self.last[cam][1])

    def _forget_if_taken(self, cam: str) -> None:
        """Forget the kept block of `cam` once the PLC has cleared `new`."""
        if self._kept_block(cam) is not None and not self.plc.read_register(self._base(cam) + NEW):
            self.last[cam] = self.last[cam][:2]
            self._save_state()

    def _written_before(self, v: dict[str, Any]) -> bool:
        last = self.last.get(v["camera"])
        return last is not None and last[0] == v.get("run") and v["seq"] <= last[1]

    # -- one verdict --------------------------------------------------------------------------------
    def write(self, v: dict[str, Any]) -> None:
        """Write one verdict to the PLC (raises PlcError); the caller acknowledges afterwards."""
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
                log.error("PLC did not take verdict %s seq %d in time: overwriting it", v["camera"], v["seq"] - 1)
        late = (time.time_ns() - v.get("t_acq_ns", 0)) / 1e6 > self.cfg.deadline_ms
        if late:
            flags |= FLAG_LATE
            self.stats["late"] += 1
            log.warning("verdict %s seq %d is late: written with the late flag, no reject pulse", v["camera"], v["seq"])
        block = Block.encode(v, self.counts[v["camera"]] + 1, self.cfg.not_inspected_rejects, flags)
        self.plc.write_block(base, block.registers)
        self.counts[v["camera"]] += 1
        if block.reject:
            self.stats["rejects"] += 1
            if self.cfg.reject_pulse_ms > 0 and not late:
                self._pulse(self.cfg.coil_base + cam)
        self.last[v["camera"]] = [v.get("run"), v["seq"]] + ([block.registers] if self.serves_registers else [])
        self._save_state()
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
        new = not self._written_before(v)
        if new:
            try:
                self.write(v)
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
