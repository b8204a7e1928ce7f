"""Preflight checks of a target machine against a runtime config, before a line goes live.

`sclvi check line.yaml` answers what an integrator asks at commissioning: does the bundle load and is it
calibrated, which encoder backend and k-NN kernel will run (and can they start here: an engine built for
another GPU or TensorRT version fails now, not on the first part), is there shared memory for the rings,
are the cameras there, can the sockets bind, are the cores oversubscribed, do earlier runs owe the PLC verdicts. Nothing here grabs a frame.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sclvi.edge.config import RuntimeConfig, SourceConfig, camera_frames, check_threshold, configured_thresholds, open_bundle
from sclvi.errors import SclviError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fatal: bool = True  # a failed non-fatal check is a warning: the line runs, but not as intended


def _python() -> Check:
    v = sys.version_info
    return Check("python", v >= (3, 10), f"{v.major}.{v.minor}.{v.micro} (needs >= 3.10)")


def _bundle_checks(cfg: RuntimeConfig) -> list[Check]:
    from sclvi.engines import available_backends, load_backend
    from sclvi.knn import choose_kernel
    from sclvi.scorer import planned_kernels
    from sclvi.knn.numba_cuda import cuda_available

    try:
        bundle = open_bundle(cfg)
    except SclviError as exc:
        return [Check("bundle", False, str(exc))]
    checks = [Check("bundle", True, f"{cfg.bundle} (preset {bundle.config.preset}, {bundle.config.geometry.describe()})")]
    checks.append(Check("bundle signature", cfg.bundle_public_key is not None,
                        f"signed, verified with {cfg.bundle_public_key}" if cfg.bundle_public_key else
                        "not required (set bundle_public_key so only bundles you signed are loaded)", fatal=False))
    try:
        camera_frames(cfg, bundle.config.geometry.frame)
        checks.append(Check("camera frames", True, "any size (resized)" if bundle.config.geometry.frame is None else
                            f"{bundle.config.geometry.frame[0]}x{bundle.config.geometry.frame[1]} on every camera"))
    except SclviError as exc:
        checks.append(Check("camera frames", False, str(exc)))
    checks.append(Check("memory bank", bundle.has_bank(),
                        "present" if bundle.has_bank() else "missing: train the bundle with `sclvi train` (it builds the bank)"))
    calibration = bundle.manifest.get("calibration", {})
    image, pixel = configured_thresholds(cfg, calibration)
    source = "runtime config" if cfg.image_threshold is not None else "bundle calibration"
    if image is None or pixel is None:
        checks.append(Check("thresholds", False, f"not calibrated: run `sclvi calibrate {cfg.bundle} --good DIR`"))
    else:
        problems = [p for p in (check_threshold("image", image, calibration), check_threshold("pixel", pixel, calibration)) if p]
        checks.append(Check("thresholds", not problems,
                            "; ".join(problems) or f"image {image:.5g}, pixel {pixel:.5g} ({source})"))
    found = available_backends(bundle)
    try:
        backend = load_backend(bundle, cfg.backend, cfg.threads_per_worker)  # really starts it: engines are checked
        checks.append(Check("encoder backend", True, f"{backend.name} (usable here: {', '.join(found)})"))
    except SclviError as exc:
        checks.append(Check("encoder backend", False, str(exc)))
    if "tensorrt" not in found and cuda_available():  # a GPU sits idle while the CPU encodes
        checks.append(Check("GPU engines", False, "this machine has a CUDA GPU but no TensorRT engines in use: run "
                            f"`sclvi build-engines {cfg.bundle} --tensorrt`", fatal=False))
    try:
        kernels = planned_kernels(bundle) if bundle.has_bank() else {"small": choose_kernel(bundle.config.scoring)}
        checks.append(Check("k-NN kernel", True, " / ".join(f"{k} ({s})" for s, k in kernels.items())))
    except SclviError as exc:
        checks.append(Check("k-NN kernel", False, str(exc)))
    if bundle.has_bank():
        checks.append(_worker_dry_run(cfg))
    return checks


def _worker_dry_run(cfg: RuntimeConfig) -> Check:
    """Load what an inference worker loads (mean image, banks, engines) and score a blank frame."""
    from sclvi.edge.inference import load_scorer

    try:
        load_scorer(cfg)
    except Exception as exc:  # whatever would stop a worker from starting
        return Check("inference dry run", False, f"a worker could not start: {str(exc).splitlines()[0][:300]}")
    return Check("inference dry run", True, "mean image, banks and encoder load; a blank frame scores")


def _shared_memory(cfg: RuntimeConfig, shm: Path) -> Check:
    need = sum(cfg.ring_slots * c.max_frame_bytes for c in cfg.cameras)
    try:
        free = shutil.disk_usage(shm).free
    except OSError as exc:
        return Check("shared memory", False, f"cannot read {shm}: {exc}")
    return Check(
        "shared memory", need <= free,
        f"rings need {need / 2**20:.0f} MiB, {shm} has {free / 2**20:.0f} MiB free"
        + ("" if need <= free else ": lower ring_slots or max_frame_bytes, or enlarge /dev/shm"),
    )


def _camera(src: SourceConfig) -> Check:
    name = f"camera {src.camera_id}"
    path = Path(src.path) if src.path else None
    if src.kind == "folder":
        ok = path is not None and path.is_dir() and any(path.iterdir())
        return Check(name, ok, f"folder {path}" + ("" if ok else " does not exist or is empty"))
    if src.kind == "video":
        ok = path is not None and path.is_file()
        return Check(name, ok, f"video {path}" + ("" if ok else " does not exist"))
    if src.kind == "opencv":
        return Check(name, True, f"OpenCV device {src.device or 0} (opened at start)", fatal=False)
    return _genicam(name, src)


def _genicam(name: str, src: SourceConfig) -> Check:
    """List the producer's devices (without opening one) and find the configured camera."""
    cti = Path(src.path or "")
    if not cti.is_file():
        return Check(name, False, f"GenTL producer {cti} does not exist (the .cti file of your camera's SDK)")
    from harvesters.core import Harvester

    h = Harvester()
    try:
        h.add_file(str(cti))
        h.update()
        # read out now: the device infos die with the Harvester
        devices = [f"{d.vendor} {d.model} serial {d.serial_number}" for d in h.device_info_list]
        serials = [str(d.serial_number) for d in h.device_info_list]
    except Exception as exc:  # a broken producer: say so, do not crash the check
        return Check(name, False, f"{cti} failed to enumerate devices: {exc}")
    finally:
        h.reset()
    dev = src.device
    if not devices:
        return Check(name, False, f"no camera found through {cti}")
    if dev is None or (isinstance(dev, int) and 0 <= dev < len(devices)):
        return Check(name, True, f"{devices[dev or 0]} through {cti.name}")
    if str(dev) in serials:
        return Check(name, True, f"{devices[serials.index(str(dev))]} through {cti.name}")
    return Check(name, False, f"device {dev!r} not found through {cti.name}; present: serials {', '.join(serials)}")


def _bindable(name: str, endpoint: str | None) -> Check:
    if not endpoint:
        return Check(name, True, "off", fatal=False)
    from sclvi.edge.endpoints import endpoint_free, ipc_path

    if ipc_path(endpoint) is not None:  # binding would unlink a running station's socket: ask its lock instead
        free = endpoint_free(endpoint)
        return Check(name, free, f"{endpoint} " + ("is free (private folder, 0600 socket)" if free else
                                                    "is held by a running sclvi runtime: stop it first"))
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(endpoint)
        return Check(name, True, f"{endpoint} can be bound")
    except zmq.ZMQError as exc:
        return Check(name, False, f"{endpoint} cannot be bound ({exc}): another runtime running, or a wrong address?")
    finally:
        sock.close()
        ctx.term()


def _cores(cfg: RuntimeConfig) -> Check:
    cores = os.cpu_count() or 1
    threads = cfg.workers * (cfg.threads_per_worker or max(1, cores // cfg.workers))
    ok = threads <= cores
    return Check("cpu threads", ok, f"{cfg.workers} worker(s) x {threads // cfg.workers} thread(s) on {cores} cores"
                 + ("" if ok else ": oversubscribed, lower threads_per_worker"), fatal=False)


def _owed(cfg: RuntimeConfig) -> Check:
    """Where verdicts unacknowledged at a stop wait for the next run: ours, lockable, and what waits there."""
    from sclvi.edge.endpoints import FolderClaim
    from sclvi.edge.journal import OwedVerdicts

    if cfg.owed_dir is None:
        return Check("owed verdicts", False, "owed_dir is not set: verdicts still unacknowledged when the runtime stops "
                     "are lost for the PLC (set it to a state folder, e.g. /var/lib/sclvi/<station>/owed)", fatal=False)
    try:
        FolderClaim(cfg.owed_dir).release()
    except (OSError, SclviError) as exc:
        return Check("owed verdicts", False, f"owed_dir {cfg.owed_dir}: {exc}")
    runs = len(OwedVerdicts(cfg.owed_dir).journals())
    return Check("owed verdicts", True, f"{cfg.owed_dir}: " + (f"{runs} earlier run(s) owe the PLC verdicts, resent at start"
                                                              if runs else "nothing owed"))


def _plc(cfg: RuntimeConfig) -> Check:
    """The bridge section: valid, on the runtime's verdict endpoint, and the PLC answers (client mode)."""
    import socket

    from sclvi.plc.config import load_bridge_config

    try:
        b = load_bridge_config(overrides=cfg.bridge)
    except SclviError as exc:
        return Check("PLC bridge", False, str(exc))
    bind_host, _, bind_port = b.verdict_endpoint.partition("://")[2].rpartition(":")
    same = b.verdict_endpoint == cfg.verdict_endpoint or (
        bind_host in ("*", "0.0.0.0") and cfg.verdict_endpoint.endswith(f":{bind_port}"))
    if not same:
        return Check("PLC bridge", False, f"bridge listens on {b.verdict_endpoint}, the runtime sends to {cfg.verdict_endpoint}")
    unknown = [c.camera_id for c in cfg.cameras if c.camera_id not in b.cameras]
    if unknown:
        return Check("PLC bridge", False, f"cameras without a register block in the bridge: {', '.join(unknown)}")
    if b.mode in ("modbus-server", "opcua-server"):
        return _bindable(f"PLC bridge ({'Modbus' if b.mode == 'modbus-server' else 'OPC UA'} server)", f"tcp://{b.host}:{b.port}")
    try:
        with socket.create_connection((b.host, b.port), timeout=2):
            pass
    except OSError as exc:
        return Check("PLC bridge", False, f"the PLC at {b.host}:{b.port} does not answer ({exc}): check cabling, IP, "
                     "and that its Modbus TCP server is enabled")
    return Check("PLC bridge", True, f"Modbus TCP PLC at {b.host}:{b.port} reachable; blocks for {', '.join(b.cameras)}")


def preflight(cfg: RuntimeConfig, shm: Path = Path("/dev/shm")) -> list[Check]:
    steps: list[Callable[[], list[Check] | Check]] = [
        _python,
        lambda: _bundle_checks(cfg),
        lambda: _shared_memory(cfg, shm),
        *[(lambda c=c: _camera(c)) for c in cfg.cameras],
        lambda: _bindable("telemetry endpoint", cfg.telemetry_endpoint),
        lambda: _bindable("control endpoint", cfg.control_endpoint),
        lambda: Check("verdict endpoint", cfg.verdict_endpoint.startswith(("tcp://", "ipc://")),
                      f"{cfg.verdict_endpoint} (the PLC bridge binds it; we connect)"),
        lambda: _cores(cfg),
        lambda: _owed(cfg),
        *([lambda: _plc(cfg)] if cfg.bridge is not None else []),
    ]
    checks: list[Check] = []
    for step in steps:
        result = step()
        checks += result if isinstance(result, list) else [result]
    return checks


def passed(checks: list[Check]) -> bool:
    return all(c.ok or not c.fatal for c in checks)
