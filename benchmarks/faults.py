"""Fault injection against the real runtime: does every grabbed frame still reach the PLC exactly once?

    sclvi bench faults [--frames 24] [--rate 6] [--faults worker-kill,publisher-kill,...]

Each fault runs the runtime (real processes, shared memory, ZeroMQ on 127.0.0.1) on a folder source or
the viky GenICam simulator, with a PLC stand-in bridge that acknowledges every verdict, and injects the
fault once a few verdicts have arrived. Per fault: frames grabbed, verdicts delivered, lost (grabbed
sequence numbers the PLC never got), duplicates the bridge de-duplicated, NOT_INSPECTED by reason, and
the recovery time (fault -> the next verdict at the PLC). Random weights: the verdicts' content does not
matter here, their delivery does. Writes faults-<cpu|gpu>.md / .json.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import msgpack
import typer
import zmq

from sclvi.benchmarks.common import OUT, benchmark_app, invoke, listed, machine, save_report, start
from sclvi.benchmarks.line import bench_config, prepare_bundle
from sclvi.edge.endpoints import free_ports

VIKY_NOTE = "viky (the genicam wheel's simulated GenTL camera)"


class Bridge(threading.Thread):
    """The PLC side: ROUTER, acks {run, camera, seq}, de-duplicates on (run, camera, seq). It can go
    away for a while (`outage`) or answer every verdict with malformed acks first (`garbage`)."""

    def __init__(self, endpoint: str, garbage: bool = False) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.garbage = endpoint, garbage
        self.ctx = zmq.Context()
        self.seen: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.duplicates = 0
        self.times: list[float] = []
        self.done = threading.Event()
        self.down_until = 0.0
        self.lock = threading.Lock()

    def outage(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds

    def run(self) -> None:
        sock = None
        while not self.done.is_set():
            if time.monotonic() < self.down_until:
                if sock is not None:
                    sock.close(linger=0)
                    sock = None
                time.sleep(0.02)
                continue
            if sock is None:
                sock = self.ctx.socket(zmq.ROUTER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.bind(self.endpoint)
            if not sock.poll(20):
                continue
            ident, *frames = sock.recv_multipart()
            if len(frames) != 2 or frames[0] != b"verdict":
                continue
            body = msgpack.unpackb(frames[1], raw=False)
            key = (body.get("run"), body["camera"], body["seq"])
            if self.garbage:
                for g in (b"\xff\x00", msgpack.packb("x"), msgpack.packb([1]), msgpack.packb({"camera": [1], "seq": "2"})):
                    sock.send_multipart([ident, b"ack", g])
            sock.send_multipart([ident, b"ack", msgpack.packb({"run": key[0], "camera": key[1], "seq": key[2]})])
            with self.lock:
                if key in self.seen:
                    self.duplicates += 1
                else:
                    self.seen[key] = body
                    self.times.append(time.monotonic())
        if sock is not None:
            sock.close(linger=0)
        self.ctx.term()

    def wait_for(self, n: int, timeout_s: float = 120) -> None:
        end = time.monotonic() + timeout_s
        while len(self.seen) < n and time.monotonic() < end:
            time.sleep(0.02)


def _ask(endpoint: str, **request: Any) -> dict[str, Any]:
    ctx = zmq.Context.instance()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(endpoint)
    try:
        req.send(json.dumps(request).encode())
        if not req.poll(10_000):
            raise TimeoutError("control socket did not answer")
        return json.loads(req.recv())
    finally:
        req.close()


def _kill(role: str) -> Callable[[str], None]:
    def inject(control: str) -> None:
        st = _ask(control, cmd="status")
        pid = {"worker": lambda: st["workers"][0]["pid"], "publisher": lambda: st["publisher"]["pid"],
               "acquisition": lambda: st["cameras"][0]["pid"]}[role]()
        os.kill(pid, signal.SIGKILL)
    return inject


def run_fault(name: str, bundle: Path, replay: Path, args: SimpleNamespace, inject: Callable[..., None] | None,
              source: dict[str, Any], garbage: bool = False, runs: int = 1, back_between_runs: bool = False,
              owed_dir: str | None = None) -> dict[str, Any]:
    """One fault: runtime(s) in a thread, bridge, injection after a third of the frames (of the first run);
    `back_between_runs`: a bridge outage ends only once that run has stopped."""
    from sclvi.edge.config import load_runtime_config
    from sclvi.edge.supervisor import Runtime

    verdict_port, control_port = free_ports(2)
    cfg = {
        "bundle": str(bundle), "cameras": [source], "workers": 1, "threads_per_worker": 1, "deadline_ms": args.deadline_ms,
        "verdict_endpoint": f"tcp://127.0.0.1:{verdict_port}", "telemetry_endpoint": None,
        "control_endpoint": f"tcp://127.0.0.1:{control_port}", "ack_timeout_ms": 100, "shutdown_timeout_s": 5,
        "owed_dir": owed_dir,  # as the example station config: what a run still owes when it stops, the next resends
    }
    bridge = Bridge(cfg["verdict_endpoint"], garbage)
    bridge.start()
    totals: dict[str, int] = {}
    grabbed = 0
    t_fault = None
    for _ in range(runs):
        rt = Runtime(load_runtime_config(overrides=cfg))
        result: dict[str, int] = {}
        th = threading.Thread(target=lambda: result.update(rt.run()))
        th.start()
        if inject is not None and t_fault is None:
            bridge.wait_for(len(bridge.seen) + max(2, args.frames // 3))
            t_fault = time.monotonic()
            inject(bridge if name.startswith("bridge-") else cfg["control_endpoint"])
        th.join(300)
        if back_between_runs:
            bridge.down_until = 0.0
        grabbed += result.get("frames_grabbed", 0)
        for k, v in result.items():
            totals[k] = totals.get(k, 0) + v
    time.sleep(0.5)
    bridge.done.set()
    bridge.join(5)
    delivered = list(bridge.seen.values())
    per_run: dict[str, set[int]] = {}
    for v in delivered:
        per_run.setdefault(v.get("run"), set()).add(v["seq"])
    lost = sum(1 for r in per_run.values() for s in range(1, max(r) + 1) if s not in r)
    lost += max(0, grabbed - len(delivered) - lost)  # grabbed but beyond any delivered seq
    nis: dict[str, int] = {}
    for v in delivered:
        if v["verdict"] == "NOT_INSPECTED":
            nis[v["reason"]] = nis.get(v["reason"], 0) + 1
    after = [t for t in bridge.times if t_fault is not None and t > t_fault]
    return {
        "fault": name, "source": source["kind"], "grabbed": grabbed, "delivered": len(delivered), "lost": lost,
        "duplicates": bridge.duplicates, "runs": len(per_run), "not_inspected": nis,
        "recovery_s": (after[0] - t_fault) if after else None,
        "restarts": {k: totals.get(k, 0) for k in ("worker_restarts", "publisher_restarts", "acquisition_restarts")},
        "bad_acks": totals.get("bad_acks", 0),
    }


def write_report(rows: list[dict[str, Any]], args: SimpleNamespace, seconds: float) -> Path:
    info = machine()
    tag = "gpu" if "gpu" in info else "cpu"
    lines = [
        f"# Fault injection ({tag})",
        "",
        f"{args.frames} frames per run at {args.rate:g} frames/s, {args.image_size}-px random-weight dense-lite "
        f"model, one worker, deadline {args.deadline_ms:.0f} ms; the fault hits once a third of the verdicts "
        f"arrived. Lost = grabbed sequence numbers the bridge never received (goal: 0 in every row). "
        f"`bridge-down-at-stop`: the bridge goes away and comes back only after the runtime stopped; a second run "
        f"resends what the first still owed (`owed_dir`). "
        f"`genicam` rows grab from {VIKY_NOTE}. Wall time {seconds / 60:.1f} min.",
        "",
        "| fault | source | grabbed | delivered | lost | duplicates | NOT_INSPECTED by reason | recovery s | restarts |",
        "|---|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        nis = ", ".join(f"{k} {v}" for k, v in sorted(r["not_inspected"].items())) or "-"
        restarts = ", ".join(f"{k.split('_')[0]} {v}" for k, v in r["restarts"].items() if v) or "-"
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.2f}"
        lines.append(f"| {r['fault']} | {r['source']} | {r['grabbed']} | {r['delivered']} | {r['lost']} | "
                     f"{r['duplicates']} | {nis} | {rec} | {restarts} |")
    lines += ["", "/dev/shm exhaustion is not a row: the runtime reserves every page of its frame rings at start (posix"
              "_fallocate), so a /dev/shm too small refuses to start with a message naming the MiB needed and free,"
              " instead of an acquisition process dying of SIGBUS mid-run (tests/test_faults.py, with a 2 MiB tmpfs"
              " in a private mount namespace); killing the supervisor is covered by `tests/test_faults.py` (children exit via the parent-death signal)."]
    return save_report(args.out, f"faults-{tag}", lines, info, {"rows": rows})


FAULTS = ("none", "worker-kill", "publisher-kill", "acquisition-kill", "bridge-garbage", "bridge-outage",
          "corrupt-frame", "runtime-restart", "bridge-down-at-stop", "genicam-worker-kill", "genicam-publisher-kill")


def faults(
    faults: list[str] = typer.Option(list(FAULTS), metavar="FAULT,...", help=f"faults to inject: {', '.join(FAULTS)}"),
    frames: int = typer.Option(24),
    rate: float = typer.Option(6.0),
    image_size: int = typer.Option(128),
    deadline_ms: float = typer.Option(3000.0),
    work: Optional[Path] = typer.Option(None, help="scratch folder (default: a temporary one)"),
    out: Path = OUT,
) -> Path:
    """Fault injection (killed processes, bad bridge, corrupt frames, restarts): verdicts lost per fault."""
    args = SimpleNamespace(faults=listed(faults, choices=FAULTS, option="--faults"), frames=frames, rate=rate,
                           image_size=image_size, deadline_ms=deadline_ms, work=work, out=start(out))
    import genicam

    viky = str(Path(genicam.__file__).parent / "viky.cti")
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        cfg = bench_config("dense-lite", args.image_size, 16)
        bundle, replay = prepare_bundle(work / "line", cfg, 6, 8)
        folder = {"kind": "folder", "camera_id": "cam0", "path": str(replay), "rate_hz": args.rate, "loop": True,
                  "max_frames": args.frames}
        camera = {"kind": "genicam", "camera_id": "viky", "path": viky, "device": "2", "max_frames": args.frames,
                  "features": {"PixelFormat": "Mono8"}}
        bad = work / "replay-bad"
        bad.mkdir(exist_ok=True)
        for f in sorted(replay.iterdir()):
            (bad / f.name).write_bytes(f.read_bytes())
        (bad / "0003_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        plans: dict[str, dict[str, Any]] = {
            "none": {"inject": None, "source": folder},
            "worker-kill": {"inject": _kill("worker"), "source": folder},
            "publisher-kill": {"inject": _kill("publisher"), "source": folder},
            "acquisition-kill": {"inject": _kill("acquisition"), "source": folder},
            "bridge-garbage": {"inject": None, "source": folder, "garbage": True},
            "bridge-outage": {"inject": lambda b: b.outage(2.0), "source": folder},
            "corrupt-frame": {"inject": None, "source": {**folder, "path": str(bad)}},
            "runtime-restart": {"inject": None, "source": folder, "runs": 2},
            # the bridge goes away mid-run and is back only after the runtime stopped: the next run delivers
            # what the first still owed (from owed_dir)
            "bridge-down-at-stop": {"inject": lambda b: b.outage(1e9), "source": folder, "runs": 2,
                                    "back_between_runs": True, "owed_dir": str(work / "owed")},
            "genicam-worker-kill": {"inject": _kill("worker"), "source": camera},
            "genicam-publisher-kill": {"inject": _kill("publisher"), "source": camera},
        }
        for name in args.faults:
            row = run_fault(name, bundle, replay, args, **plans[name])
            rows.append(row)
            print(f"{name:24s} grabbed {row['grabbed']:4d} delivered {row['delivered']:4d} lost {row['lost']:3d} "
                  f"dups {row['duplicates']:3d} NIS {row['not_inspected']}", flush=True)
    path = write_report(rows, args, time.perf_counter() - t0)
    print(f"report: {path}")
    return path


app = benchmark_app(faults)


def main(argv: list[str] | None = None) -> Path:
    return invoke(app, argv)


if __name__ == "__main__":
    app()
