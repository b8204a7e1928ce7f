"""Runtime configuration (YAML): cameras, workers, deadlines, endpoints. Unknown keys are errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sclvi.config import describe_validation_error, read_yaml
from sclvi.edge.curve import CurveConfig
from sclvi.edge.curve import check as check_curve
from sclvi.edge.endpoints import default_control_endpoint
from sclvi.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """One camera (or a stand-in for one)."""

    kind: Literal["genicam", "folder", "video", "opencv"]
    camera_id: str = Field(
        "cam0", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="letters, digits, _ . - (it names recorder files and travels in every verdict)",
    )
    path: str | None = Field(None, description="genicam: the .cti producer; folder: image folder; video: file")
    device: str | int | None = Field(None, description="genicam: serial number or index; opencv: device index")
    features: dict[str, Any] = Field(default_factory=dict, description="GenICam features, e.g. PixelFormat, TriggerMode")
    rate_hz: float | None = Field(None, gt=0, description="folder/video replay rate (None: as fast as possible)")
    loop: bool = False
    max_frames: int | None = Field(None, ge=1, description="stop after this many frames (tests, demos)")
    fetch_timeout_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0, description="longest back-off between reconnect attempts")
    max_frame_bytes: int = Field(2448 * 2048 * 3, ge=1, description="ring slot size: the largest frame expected")
    frame_size: tuple[int, int] | None = Field(
        None, description="[width, height] this camera must deliver (what the model was trained on); any other size "
        "gets NOT_INSPECTED bad_frame instead of being stretched to the model's input (None: any size)",
    )

    @model_validator(mode="after")
    def _check(self) -> "SourceConfig":
        if self.kind in ("genicam", "folder", "video") and not self.path:
            raise ValueError(f"a {self.kind} source needs `path`")
        if self.frame_size is not None and min(self.frame_size) < 1:
            raise ValueError("frame_size must be [width, height] in pixels")
        return self


class RuntimeConfig(_Strict):
    bundle: str
    bundle_public_key: str | None = Field(
        None, description="Ed25519 public key file (core/signing.py): only bundles signed by its private key are "
        "loaded, at start, by every worker and on `reload` (the thresholds live in the signed manifest)",
    )
    cameras: list[SourceConfig] = Field(min_length=1)
    workers: int = Field(1, ge=1, description="inference worker processes; each holds its encoder and k-NN threads to "
                         "its share of the cores (2 on a 2-core box: 1.5x the frames/s, each frame slower)")
    backend: str = "auto"
    threads_per_worker: int = Field(0, ge=0, description="threads per worker; 0 = the cores divided by `workers`")
    ring_slots: int = Field(8, ge=1, description="shared-memory frame slots per camera")
    deadline_ms: float = Field(1000.0, gt=0, description="a frame without a verdict by then gets NOT_INSPECTED")
    worker_deaths_per_minute: int = Field(
        6, ge=1, description="an inference worker dying this often in a minute stops the line (non-zero exit) "
        "instead of restarting forever while every part gets NOT_INSPECTED",
    )
    stall_timeout_s: float = Field(
        30.0, gt=0, description="an acquisition, inference or publisher process that shows no sign of life for this "
        "long (hung in a camera driver, a lock, an endless loop) is killed and restarted like a crashed one; must exceed "
        "the longest single inference and every camera's fetch_timeout_s",
    )
    verdict_endpoint: str = Field("tcp://127.0.0.1:5555", description="the PLC bridge's ROUTER (we connect)")
    telemetry_endpoint: str | None = Field("tcp://127.0.0.1:5556", description="PUB for heartbeats (we bind)")
    control_endpoint: str | None = Field(
        default_factory=default_control_endpoint,
        description="REP for commands (we bind); default: an ipc:// socket in this user's private station folder "
        "(edge/endpoints.py), reachable by no other local user",
    )
    control_token: str | None = Field(
        None, min_length=16,
        description="shared secret that commands changing the line (set_threshold, pause, resume, reload) must carry "
        "as `token`; without one those commands are refused (status and stats stay open)",
    )
    ack_timeout_ms: float = Field(250.0, gt=0, description="resend a verdict not acknowledged by then")
    max_pending: int = Field(10000, ge=1, description="unacknowledged verdicts kept for resending")
    heartbeat_s: float = Field(1.0, gt=0)
    preview_hz: float = Field(
        2.0, ge=0, description="JPEG previews (frame + heatmap) per second per worker on the telemetry socket for the "
        "operator view; 0 = none. Made after the verdict is sent, so they never delay one"
    )
    preview_px: int = Field(320, ge=32, le=2048, description="longest side of a preview JPEG")
    drift_window: int = Field(200, ge=10, description="OK parts whose median score the drift watch compares with the calibration")
    drift_limit: float = Field(
        1.0, gt=0, description="alarm when that median moves more than this many p50-p99 spreads of the calibration"
    )
    image_threshold: float | None = Field(None, allow_inf_nan=False, description="overrides the bundle's calibration")
    pixel_threshold: float | None = Field(None, allow_inf_nan=False)
    record_dir: str | None = Field(None, description="keep NG / NOT_INSPECTED frames and heatmaps here")
    record_max_mb: float = Field(500.0, gt=0)
    shutdown_timeout_s: float = Field(10.0, gt=0)
    owed_dir: str | None = Field(
        None, description="state folder (systemd StateDirectory) where the verdicts a run could not get acknowledged "
        "are kept when it stops, for the next run to resend; one runtime per folder. None: they are logged only",
    )
    curve: CurveConfig | None = Field(
        None, description="ZeroMQ CURVE keys (edge/curve.py): encrypt the verdict, control and telemetry sockets and "
        "admit only authorized clients; needed when any of them leaves loopback",
    )
    bridge: dict[str, Any] | None = Field(
        None, description="the PLC bridge's section of the station config (`sclvi bridge` reads it; `sclvi check` "
        "checks that the PLC is reachable)",
    )

    @model_validator(mode="after")
    def _check(self) -> "RuntimeConfig":
        ids = [c.camera_id for c in self.cameras]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"camera_id must be unique (verdicts are told apart by it): {', '.join(dup)} repeated")
        named = {"verdict_endpoint": self.verdict_endpoint, "telemetry_endpoint": self.telemetry_endpoint,
                 "control_endpoint": self.control_endpoint}
        for name, endpoint in named.items():
            if endpoint is not None:
                check_endpoint(name, endpoint)
        used = [e for e in named.values() if e is not None]
        if len(set(used)) != len(used):
            raise ValueError("verdict_endpoint, telemetry_endpoint and control_endpoint must all differ")
        slow = [c.camera_id for c in self.cameras if c.fetch_timeout_s >= self.stall_timeout_s]
        if slow:  # an idle camera (waiting for its trigger) beats once per fetch timeout
            raise ValueError(f"stall_timeout_s {self.stall_timeout_s:g} must exceed fetch_timeout_s of camera(s) "
                             f"{', '.join(slow)}: an idle camera would be taken for a hung one")
        return self


def check_endpoint(name: str, endpoint: str) -> None:
    """tcp://host:port (port 1-65535) or ipc://path: caught at load, not when a socket fails to bind."""
    scheme, sep, rest = endpoint.partition("://")
    if scheme == "ipc" and sep and rest:
        if len(rest.encode()) > 100:  # a Unix socket path holds at most 107 bytes; zmq fails at bind otherwise
            raise ValueError(f"{name} {endpoint!r}: an ipc path must be at most 100 bytes (set a shorter "
                             "SCLVI_RUNTIME_DIR)")
        return
    if scheme == "tcp" and sep:
        host, colon, port = rest.rpartition(":")
        if host and colon and port.isdigit() and 1 <= int(port) <= 65535:
            return
    raise ValueError(f"{name} {endpoint!r} is not tcp://HOST:PORT (port 1-65535) or ipc://PATH")


#: A threshold may move this far (factor) from the calibrated one: beyond it the line is not inspecting
#: what it was calibrated for (1e9 passes every part), so such a value is refused, not applied.
THRESHOLD_FACTOR = 4.0


def check_threshold(name: str, value: float, calibration: dict[str, Any]) -> str | None:
    """Why `value` is not an acceptable image/pixel threshold, or None when it is."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        return f"{name} threshold must be a finite number > 0, got {value!r}"
    ref = calibration.get(f"{name}_threshold")
    if isinstance(ref, (int, float)) and ref > 0:
        lo, hi = ref / THRESHOLD_FACTOR, ref * THRESHOLD_FACTOR
        if not lo <= value <= hi:
            return (f"{name} threshold {value:.5g} is outside {lo:.5g}..{hi:.5g} (the calibrated {ref:.5g} within a "
                    f"factor {THRESHOLD_FACTOR:g}): recalibrate with `sclvi calibrate` instead")
    return None


def configured_thresholds(cfg: RuntimeConfig, calibration: dict[str, Any]) -> tuple[float | None, float | None]:
    """Image and pixel thresholds: the runtime config's override, else the bundle's calibration (None: neither)."""
    image = cfg.image_threshold if cfg.image_threshold is not None else calibration.get("image_threshold")
    pixel = cfg.pixel_threshold if cfg.pixel_threshold is not None else calibration.get("pixel_threshold")
    return image, pixel


def load_runtime_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RuntimeConfig:
    data = read_yaml(path, "runtime config") if path is not None else {}
    data.update(overrides or {})
    try:
        cfg = RuntimeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("invalid runtime config: " + describe_validation_error(exc)) from None
    if cfg.curve is not None:
        check_curve(cfg.curve, serves=bool(cfg.control_endpoint or cfg.telemetry_endpoint), connects=True)
    return cfg


def camera_frames(cfg: RuntimeConfig, frame: tuple[int, int] | None) -> RuntimeConfig:
    """The runtime config with every camera's `frame_size` set to the frame the model was trained on
    (`geometry.frame`), so acquisition refuses other sizes as bad_frame; a camera configured for another
    size is a ConfigError at start, not a line that rejects every part."""
    if frame is None:
        return cfg
    cameras = []
    for cam in cfg.cameras:
        if cam.frame_size is not None and tuple(cam.frame_size) != tuple(frame):
            raise ConfigError(
                f"camera {cam.camera_id}: frame_size {list(cam.frame_size)} but the bundle's model inspects "
                f"{frame[0]}x{frame[1]} frames (geometry.frame): fix frame_size or retrain on this camera's frames")
        cameras.append(cam.model_copy(update={"frame_size": tuple(frame)}))
    return cfg.model_copy(update={"cameras": cameras})


def open_bundle(cfg: RuntimeConfig) -> Any:
    """The station's bundle, its signature checked first when the station requires signed bundles."""
    from sclvi.bundle import load_bundle

    if cfg.bundle_public_key is not None:
        from sclvi.signing import verify_bundle

        verify_bundle(Path(cfg.bundle), Path(cfg.bundle_public_key))
    return load_bundle(cfg.bundle)
