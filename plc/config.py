"""The PLC bridge's configuration (YAML, its own file or the `bridge:` section of a station config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sclvi.edge.curve import CurveConfig
from sclvi.edge.curve import check as check_curve
from sclvi.config import describe_validation_error, read_yaml
from sclvi.edge.config import check_endpoint
from sclvi.errors import ConfigError
from sclvi.plc.registers import BLOCK


class BridgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    verdict_endpoint: str = Field("tcp://127.0.0.1:5555", description="the runtime's verdict channel (we bind the ROUTER)")
    mode: Literal["modbus-server", "modbus-client", "opcua-server"] = Field(
        "modbus-client", description="modbus-client: write into the PLC's registers; modbus-server: the PLC polls ours; "
        "opcua-server: the PLC / SCADA reads our OPC UA nodes (a node per camera, an event per verdict)"
    )
    host: str = Field("127.0.0.1", description="client: the PLC's address; server: the address we listen on")
    port: int = Field(502, ge=1, le=65535)
    device_id: int = Field(1, ge=0, le=255, description="Modbus unit id")
    opcua_namespace: str = Field("urn:sclvi:station", min_length=1, description="opcua-server: namespace URI of the nodes")
    opcua_security: Literal["none", "sign", "sign-and-encrypt"] = Field(
        "none", description="opcua-server: Basic256Sha256 Sign or SignAndEncrypt with certificates (the only policy then "
        "offered); none only on loopback or a closed cell network")
    opcua_certificate: str | None = Field(None, description="opcua-server: our application certificate (.der)")
    opcua_private_key: str | None = Field(None, description="opcua-server: its private key (.pem)")
    opcua_trusted_clients: str | None = Field(None, description="opcua-server: folder of the client certificates let in")
    cameras: list[str] = Field(min_length=1, description="camera ids in register-block order (block i at base + 32 i)")
    register_base: int = Field(0, ge=0, le=65535 - BLOCK)
    coil_base: int = Field(0, ge=0, le=65535)
    reject_pulse_ms: float = Field(200.0, ge=0, description="reject coil pulse; 0 = no coil")
    not_inspected_rejects: bool = Field(True, description="NOT_INSPECTED sets reject (never a silent OK)")
    deadline_ms: float = Field(1000.0, gt=0, description="a verdict older than this (since acquisition) is flagged late")
    handshake: bool = Field(False, description="wait for the PLC to clear `new` before writing the next verdict")
    handshake_timeout_ms: float = Field(500.0, gt=0)
    reorder_wait_ms: float = Field(
        1000.0, ge=0, description="a verdict that overtook an earlier one of its camera (lost in a restart) waits this "
        "long, unacknowledged, for the runtime to resend the earlier one, so the PLC gets them in order; keep it above "
        "the runtime's ack_timeout_ms")
    state_file: str | None = Field(None, description="remembers the last verdict written per camera across restarts")
    curve: CurveConfig | None = Field(
        None, description="ZeroMQ CURVE (edge/curve.py): our certificate (bridge.key_secret) and the folder of station "
        "certificates allowed to send verdicts; needed when the station is on another machine",
    )

    @model_validator(mode="after")
    def _check(self) -> "BridgeConfig":
        check_endpoint("verdict_endpoint", self.verdict_endpoint)
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError("cameras must be unique")
        if self.register_base + BLOCK * len(self.cameras) > 65536:
            raise ValueError("the camera blocks run past register 65535: lower register_base or split the cameras")
        return self


def load_bridge_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> BridgeConfig:
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path, "bridge config")
        data = dict(data.get("bridge", data))
    data.update(overrides or {})
    try:
        cfg = BridgeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("invalid bridge config: " + describe_validation_error(exc)) from None
    if cfg.curve is not None:
        check_curve(cfg.curve, serves=True, connects=False)
    if cfg.mode == "opcua-server":
        from sclvi.plc.opcua_security import check_files

        check_files(cfg.opcua_security, cfg.opcua_certificate, cfg.opcua_private_key, cfg.opcua_trusted_clients)
    return cfg
