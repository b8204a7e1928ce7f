"""Modbus TCP endpoints of the bridge (pymodbus), one interface for both roles a line may need:

- `ModbusServerPlc`: the bridge serves the registers and the PLC polls them (PLC as Modbus client);
- `ModbusClientPlc`: the bridge writes into the PLC's own registers (PLC as Modbus server, the usual
  setup with Siemens MB_SERVER, Beckhoff, Rockwell, Omron).
A write that fails raises `PlcError`: the bridge then does not acknowledge, and the runtime resends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Protocol

from sclvi.errors import SclviError

log = logging.getLogger("sclvi.plc")
HOLDING, COILS = 3, 1  # Modbus function codes of the tables


class PlcError(SclviError):
    """The PLC could not be written or read."""


class Plc(Protocol):
    def write_block(self, base: int, registers: list[int]) -> None: ...

    def read_register(self, address: int) -> int: ...

    def set_coil(self, address: int, value: bool) -> None: ...

    def close(self) -> None: ...


class ModbusServerPlc:
    """An in-process Modbus TCP server (its own thread and event loop) holding the verdict registers."""

    def __init__(self, host: str, port: int, registers: int, coils: int) -> None:
        from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext

        self.device = ModbusDeviceContext(hr=ModbusSequentialDataBlock(0, [0] * registers),
                                          co=ModbusSequentialDataBlock(0, [False] * coils))
        self.context = ModbusServerContext(devices=self.device, single=True)
        self.loop = asyncio.new_event_loop()
        self.server = None
        self.lock = threading.Lock()
        started = threading.Event()
        errors: list[BaseException] = []

        async def serve() -> None:
            from pymodbus.server import ModbusTcpServer

            self.server = ModbusTcpServer(self.context, address=(host, port))
            await self.server.serve_forever(background=True)  # listening (or raised) when this returns
            started.set()
            await self.server.serving

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(serve())
            except BaseException as exc:  # reported to the constructor
                errors.append(exc)
                started.set()

        self.thread = threading.Thread(target=run, name="modbus-server", daemon=True)
        self.thread.start()
        if not started.wait(10) or errors:
            raise PlcError(f"cannot serve Modbus TCP on {host}:{port}: {errors[0] if errors else 'timeout'}")
        log.info("Modbus TCP server on %s:%d (%d holding registers, %d coils)", host, port, registers, coils)

    def write_block(self, base: int, registers: list[int]) -> None:
        with self.lock:
            self.device.setValues(HOLDING, base + 1, registers[1:])  # fields first ...
            self.device.setValues(HOLDING, base, registers[:1])  # ... then the new-data flag

    def read_register(self, address: int) -> int:
        with self.lock:
            return int(self.device.getValues(HOLDING, address, 1)[0])

    def set_coil(self, address: int, value: bool) -> None:
        with self.lock:
            self.device.setValues(COILS, address, [value])

    def close(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
        self.thread.join(10)


class ModbusClientPlc:
    """Writes into a PLC's holding registers and coils over Modbus TCP (reconnects on demand)."""

    def __init__(self, host: str, port: int, device_id: int, timeout_s: float = 1.0) -> None:
        from pymodbus.client import ModbusTcpClient

        self.client = ModbusTcpClient(host, port=port, timeout=timeout_s, retries=1)
        self.device_id = device_id
        self.where = f"{host}:{port}"

    def _check(self, response: object, what: str) -> object:
        if response is None or getattr(response, "isError", lambda: True)():
            raise PlcError(f"PLC {self.where}: {what} failed ({response})")
        return response

    def _call(self, what: str, fn, *args, **kwargs) -> object:  # noqa: ANN001 - pymodbus's own signatures
        from pymodbus.exceptions import ModbusException

        try:
            if not self.client.connected and not self.client.connect():
                raise PlcError(f"PLC {self.where} is not reachable")
            return self._check(fn(*args, device_id=self.device_id, **kwargs), what)
        except ModbusException as exc:
            raise PlcError(f"PLC {self.where}: {what} failed ({exc})") from None

    def write_block(self, base: int, registers: list[int]) -> None:
        self._call("write verdict", self.client.write_registers, base + 1, registers[1:])
        self._call("write new-data flag", self.client.write_register, base, registers[0])

    def read_register(self, address: int) -> int:
        return int(self._call("read", self.client.read_holding_registers, address, count=1).registers[0])

    def set_coil(self, address: int, value: bool) -> None:
        self._call("write reject coil", self.client.write_coil, address, value)

    def close(self) -> None:
        self.client.close()
