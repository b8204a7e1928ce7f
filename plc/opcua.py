"""OPC UA server endpoint of the bridge (asyncua): a node per camera with the verdict fields, and an
event per verdict.

Why a second protocol: many PLCs and SCADA/MES systems (Siemens S7-1500, Beckhoff TwinCAT, B&R) read
OPC UA natively and prefer named, typed variables and events to a register map. The fields and their
order are the Modbus block's (plc/registers.py), so the bridge writes one `Block` whichever protocol the
line uses: fields first, `New` last; the PLC clears `New` after reading (the handshake).

Address space (namespace `opcua_namespace`): Objects/<camera>/{New, Verdict, Reject, Reason, Seq, Run,
FrameId, Trigger, Score, Regions, Flags, Count, RejectPulse}; verdict codes as deploy/PLC.md lists them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sclvi.plc.modbus import PlcError
from sclvi.plc.registers import BLOCK, COUNT, FLAGS, FRAME_ID, NEW, REASON, REGIONS, REJECT, RUN, SCORE, SEQ, TRIGGER, VERDICT, u32

log = logging.getLogger("sclvi.plc")

#: (node name, register offset in the block, registers, OPC UA type)
FIELDS: tuple[tuple[str, int, int, str], ...] = (
    ("New", NEW, 1, "Boolean"), ("Verdict", VERDICT, 1, "UInt16"), ("Reject", REJECT, 1, "Boolean"),
    ("Reason", REASON, 1, "UInt16"), ("Seq", SEQ, 2, "UInt32"), ("Run", RUN, 2, "UInt32"),
    ("FrameId", FRAME_ID, 2, "UInt32"), ("Trigger", TRIGGER, 2, "UInt32"), ("Score", SCORE, 2, "UInt32"),
    ("Regions", REGIONS, 1, "UInt16"), ("Flags", FLAGS, 1, "UInt16"), ("Count", COUNT, 2, "UInt32"),
)


def _value(registers: list[int], offset: int, width: int, kind: str) -> Any:
    v = registers[offset] if width == 1 else u32(registers, offset)
    return bool(v) if kind == "Boolean" else v


class OpcUaServerPlc:
    """An OPC UA server (asyncua, its own thread) that PLCs and SCADA read the verdicts from."""

    def __init__(self, host: str, port: int, cameras: list[str], register_base: int, coil_base: int,
                 namespace: str = "urn:sclvi:station", security: str = "none", certificate: str | None = None,
                 private_key: str | None = None, trusted_clients: str | None = None) -> None:
        from asyncua import ua
        from asyncua.sync import Server

        self.ua = ua
        self.register_base, self.coil_base = register_base, coil_base
        self.cameras = cameras
        self.url = f"opc.tcp://{host}:{port}/sclvi/"
        self.lock = threading.Lock()
        self.server = Server()  # starts asyncua's event-loop thread, a non-daemon one
        try:
            self._serve(host, port, namespace, security, certificate, private_key, trusted_clients)
        except BaseException:
            self.server.tloop.stop()  # else that thread keeps the bridge process alive after the error
            raise
        log.info("OPC UA server at %s (cameras: %s, namespace %s, security %s)", self.url, ", ".join(cameras), namespace, security)

    def _serve(self, host: str, port: int, namespace: str, security: str, certificate: str | None,
               private_key: str | None, trusted_clients: str | None) -> None:
        """Endpoint, security, one node per field and camera, then start serving."""
        self.server.set_endpoint(self.url)
        self.server.set_server_name("SCL-VI verdict bridge")
        if security == "none":  # loopback or a closed cell network only; see deploy/PLC.md
            self.server.set_security_policy([self.ua.SecurityPolicyType.NoSecurity])
        else:
            from sclvi.plc.opcua_security import SERVER_URI, secure

            self.server.tloop.post(self.server.aio_obj.set_application_uri(SERVER_URI))
            secure(self.server, security, certificate, private_key, trusted_clients)  # type: ignore[arg-type]
        idx = self.server.register_namespace(namespace)
        self.nodes: list[dict[str, Any]] = []
        for cam in self.cameras:
            obj = self.server.nodes.objects.add_object(idx, cam)
            nodes = {}
            for name, _, _, kind in (*FIELDS, ("RejectPulse", 0, 1, "Boolean")):
                initial = False if kind == "Boolean" else 0
                nodes[name] = obj.add_variable(idx, name, self.ua.Variant(initial, getattr(self.ua.VariantType, kind)))
            nodes["New"].set_writable()  # the PLC clears it after reading
            self.nodes.append(nodes)
        self.events = self.server.get_event_generator()
        try:
            self.server.start()
        except Exception as exc:  # noqa: BLE001 - asyncua raises OSError or its own errors on a taken port
            raise PlcError(f"cannot serve OPC UA on {host}:{port}: {exc}") from None

    def _camera(self, address: int, base: int, width: int) -> tuple[int, int]:
        cam, offset = divmod(address - base, width)
        if not 0 <= cam < len(self.cameras):
            raise PlcError(f"address {address} is outside the camera blocks")
        return cam, offset

    def _write(self, node: Any, value: Any, kind: str) -> None:
        node.write_value(self.ua.DataValue(self.ua.Variant(value, getattr(self.ua.VariantType, kind))))

    def write_block(self, base: int, registers: list[int]) -> None:
        cam, _ = self._camera(base, self.register_base, BLOCK)
        nodes = self.nodes[cam]
        try:
            with self.lock:
                for name, offset, width, kind in FIELDS[1:]:  # fields first ...
                    self._write(nodes[name], _value(registers, offset, width, kind), kind)
                self._write(nodes["New"], bool(registers[NEW]), "Boolean")  # ... then the new-data flag
                self.events.event.Message = self.ua.LocalizedText(
                    f"{self.cameras[cam]} seq {_value(registers, SEQ, 2, 'UInt32')} verdict {registers[VERDICT]}"
                    f"{' reject' if registers[REJECT] else ''}")
                self.events.event.Severity = 700 if registers[REJECT] else 100
                self.events.trigger()
        except PlcError:
            raise
        except Exception as exc:  # noqa: BLE001 - the bridge must not ack what was not written
            raise PlcError(f"OPC UA write failed: {exc}") from None

    def read_register(self, address: int) -> int:
        cam, offset = self._camera(address, self.register_base, BLOCK)
        for name, off, width, kind in FIELDS:
            if off == offset and width == 1:
                with self.lock:
                    return int(self.nodes[cam][name].read_value())
        raise PlcError(f"register offset {offset} is not a one-register OPC UA field")

    def set_coil(self, address: int, value: bool) -> None:
        cam, _ = self._camera(address, self.coil_base, 1)
        with self.lock:
            self._write(self.nodes[cam]["RejectPulse"], bool(value), "Boolean")

    def close(self) -> None:
        try:
            self.server.stop()
        finally:
            if self.server.tloop.is_alive():  # stop() failed half-way: the thread must not outlive the bridge
                self.server.tloop.stop()
