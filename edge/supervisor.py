"""The supervisor: starts the processes, watches deadlines and liveness, answers the control socket,
and shuts down cleanly.

    acquisition (one per camera) --ring--> inference workers --results--> publisher --ZeroMQ--> PLC

Fail-safe rules enforced here: a frame not decided within `deadline_ms` gets NOT_INSPECTED from the
watchdog; a frame held by a worker that died gets NOT_INSPECTED (worker_crash) and the worker is
restarted; a dead acquisition process is restarted. On SIGTERM: stop grabbing (the camera is released),
let in-flight frames finish or time out, flush verdicts, exit.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import shutil
import signal
import threading
import time
from typing import Any

import zmq

from sclvi.edge import curve, endpoints
from sclvi.edge.config import RuntimeConfig, camera_frames, check_threshold, configured_thresholds, open_bundle
from sclvi.edge.drift import Reference
from sclvi.edge.messages import Reason
from sclvi.edge.ring import FREE, PROCESSING, READY, WRITING, SharedRing
from sclvi.edge.shared import FLUSH, Shared, make_shared
from sclvi.errors import ConfigError

log = logging.getLogger("sclvi.edge")
#: Control commands that change the line: they need the configured token.
MUTATING = frozenset({"set_threshold", "pause", "resume", "reload"})
#: Largest control message accepted (zmq drops the connection of a larger one).
MAX_CONTROL_BYTES = 64 * 1024


def _thresholds(cfg: RuntimeConfig, bundle: Any) -> tuple[float, float, dict[str, Any]]:
    """Image and pixel thresholds (the config's override, else the bundle's calibration), and the
    calibration they are checked against."""
    from sclvi.engines import available_backends

    if not bundle.has_bank():
        raise ConfigError(f"bundle {cfg.bundle} has no memory bank: train it with `sclvi train`")
    if not available_backends(bundle):
        raise ConfigError(f"no encoder backend can run {cfg.bundle} here: run `sclvi build-engines {cfg.bundle}`")
    calibration = bundle.manifest.get("calibration", {})
    image, pixel = configured_thresholds(cfg, calibration)
    if image is None or pixel is None:
        raise ConfigError(
            f"bundle {cfg.bundle} is not calibrated: run `sclvi calibrate {cfg.bundle} --good DIR` "
            "(or set image_threshold and pixel_threshold in the runtime config)"
        )
    for name, value in (("image", image), ("pixel", pixel)):
        problem = check_threshold(name, value, calibration)
        if problem:
            raise ConfigError(problem)
    return float(image), float(pixel), calibration


def _crash_loop(events: list[float], limit: int, window_s: float, who: str, exitcode: Any, hint: str) -> None:
    """Stop the runtime (non-zero exit) when a child keeps dying: restarting it forever would leave a line
    that looks alive while every part gets NOT_INSPECTED."""
    recent = [t for t in events if time.monotonic() - t < window_s]
    if len(recent) >= limit:
        raise ConfigError(f"{who} died {len(recent)} times in {window_s:.0f} s (last exit code {exitcode}): {hint}")


def _stop(p: Any, timeout_s: float) -> None:
    """Join a child; SIGKILL it if it does not exit (children ignore SIGTERM: the supervisor coordinates)."""
    p.join(timeout=timeout_s)
    if p.is_alive():
        log.error("%s did not exit within %.0f s: killing it", p.name, timeout_s)
        p.kill()
        p.join(timeout=5)


class Runtime:
    def __init__(self, cfg: RuntimeConfig) -> None:
        bundle = open_bundle(cfg)
        self.cfg = cfg = camera_frames(cfg, bundle.config.geometry.frame)
        *thresholds, self.calibration = _thresholds(cfg, bundle)
        # ipc:// endpoints we serve (private folder, locked against a second runtime stealing the socket) and the
        # owed_dir (one runtime resends from it), claimed before any shared memory exists: a refusal leaks nothing
        self._claims: list[endpoints.IpcClaim] = []
        try:
            for endpoint in (cfg.control_endpoint, cfg.telemetry_endpoint):
                if endpoint:
                    self._claims.append(endpoints.IpcClaim(endpoint))
            if cfg.owed_dir:
                self._claims.append(endpoints.FolderClaim(cfg.owed_dir))
        except Exception:
            for claim in self._claims:
                claim.release()
            raise
        self.shared: Shared = make_shared(
            [c.camera_id for c in cfg.cameras], cfg.ring_slots, [c.max_frame_bytes for c in cfg.cameras],
            cfg.workers, thresholds,
        )
        self.rings: list[SharedRing] = []
        self.ctx = __import__("multiprocessing").get_context("spawn")
        self.acquisition: list[Any] = [None] * len(cfg.cameras)
        self.workers: list[Any] = [None] * cfg.workers
        self.publisher: Any = None
        self._publisher_starts: list[float] = []
        self._worker_deaths: list[float] = []
        self.stopping = False
        self._stall_stop = threading.Event()
        self._stall_thread: threading.Thread | None = None  # made in start(): a thread holding self in __init__
        # would make a cycle that keeps a refused runtime's semaphores alive until the garbage collector runs
        self.zmq = zmq.Context()
        self.control = None
        self._auth = None
        try:  # a start that fails from here on (full /dev/shm, control socket) leaves nothing behind
            for spec in self.shared.rings:
                self.rings.append(SharedRing(spec, create=True))  # reserved now: a full /dev/shm fails here
            if cfg.control_endpoint:
                self.control = self.zmq.socket(zmq.REP)
                self.control.setsockopt(zmq.LINGER, 0)
                self.control.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)  # a larger message drops its sender
                if cfg.curve is not None:  # encrypted, and only authorized certificates get a REP at all
                    self._auth = curve.as_server(self.zmq, self.control, cfg.curve)
                self.control.bind(cfg.control_endpoint)
                endpoints.restrict(cfg.control_endpoint)
        except Exception:
            self._release()
            raise

    def _release(self) -> None:
        """Close the control socket and free the endpoint locks and the shared memory (at shutdown, or after a
        failed start); the run folder goes too unless a publisher still journals into it."""
        if self.control is not None:
            self.control.close()
        for claim in self._claims:
            claim.release()
        if self._auth is not None:
            self._auth.stop()
        self.zmq.term()
        for ring in self.rings:
            ring.close(unlink=True)
        if not self.publisher or not self.publisher.is_alive():
            shutil.rmtree(self.shared.runtime_dir, ignore_errors=True)

    # -- processes -------------------------------------------------------------------------------
    def _start_acquisition(self, cam: int) -> None:
        from sclvi.edge.acquisition import acquisition_main

        self.shared.beat(self.shared.heartbeat_index("acquisition", cam), 2 * self.cfg.stall_timeout_s)  # spawn + import
        p = self.ctx.Process(target=acquisition_main, args=(self.cfg, cam, self.shared), name=f"acq-{self.cfg.cameras[cam].camera_id}", daemon=True)
        p.start()
        self.acquisition[cam] = p

    def _start_worker(self, w: int) -> None:
        from sclvi.edge.inference import LOAD_TIMEOUT_S, worker_main

        self.shared.beat(self.shared.heartbeat_index("worker", w), LOAD_TIMEOUT_S + self.cfg.stall_timeout_s)
        p = self.ctx.Process(target=worker_main, args=(self.cfg, w, self.shared), name=f"worker-{w}", daemon=True)
        p.start()
        self.workers[w] = p

    def _start_publisher(self) -> None:
        from sclvi.edge.publisher import publisher_main

        self.shared.beat(self.shared.heartbeat_index("publisher"), 2 * self.cfg.stall_timeout_s)  # spawn, import, journal
        self.publisher = self.ctx.Process(
            target=publisher_main, name="publisher", daemon=True,
            args=(self.cfg, self.shared, self.shared.row_publisher(self.cfg.workers), Reference.from_calibration(self.calibration)),
        )
        self.publisher.start()
        self._publisher_starts.append(time.monotonic())

    def start(self) -> None:
        self._start_publisher()
        for w in range(self.cfg.workers):
            self._start_worker(w)
        self._stall_thread = threading.Thread(target=self._watch_stalls, name="stall-watch", daemon=True)
        self._stall_thread.start()
        self._wait_for_workers()
        for cam in range(len(self.cfg.cameras)):
            self._start_acquisition(cam)
        log.info("runtime started: %d camera(s), %d worker(s), verdicts to %s", len(self.cfg.cameras), self.cfg.workers, self.cfg.verdict_endpoint)

    def _wait_for_workers(self) -> None:
        """Grab nothing before inference can take frames: a cold start must not become NOT_INSPECTED."""
        from sclvi.edge.inference import LOAD_TIMEOUT_S as timeout_s

        end = time.monotonic() + timeout_s
        while not all(self.shared.workers_ready[:]):
            dead = [w for w, p in enumerate(self.workers) if not p.is_alive()]
            if dead:
                raise ConfigError(f"inference worker {dead[0]} failed to start (exit code {self.workers[dead[0]].exitcode}); see its log above")
            if time.monotonic() > end:
                raise ConfigError(f"inference workers not ready after {timeout_s:.0f} s")
            time.sleep(0.05)

    # -- supervision -----------------------------------------------------------------------------
    def _watch_stalls(self) -> None:
        """A process that broke its heartbeat promise (Shared.beat) is hung — in a camera driver, an endless loop,
        or stopped while holding a ring lock; a publisher stuck on its journal's disk — and the line would stand
        still while looking alive. Kill it; the watchdog then handles it as a crash (its frame NOT_INSPECTED, a new
        process, counted toward the crash-loop limit for workers; a new publisher resends what its journal owes).
        A thread of its own: the main loop itself blocks on a ring lock such a process holds, and only the kill
        frees it. It never reaps (is_alive/exitcode would race the main loop's waitpid): it signals the pid the
        main loop gave the process."""
        while not self._stall_stop.wait(min(0.5, self.cfg.stall_timeout_s / 4)):
            now = time.monotonic_ns()
            procs = [("acquisition", i, p) for i, p in enumerate(self.acquisition)] + [("worker", i, p) for i, p in enumerate(self.workers)]
            procs.append(("publisher", 0, self.publisher))
            late = [(self.shared.alive_until[self.shared.heartbeat_index(kind, i)], kind, i, p) for kind, i, p in procs if p is not None]
            late = [entry for entry in late if entry[0] and now > entry[0]]
            if not late or self.stopping:
                continue
            # One per round, the longest overdue: the others may only be waiting on it (a ring lock it holds)
            # and come back to life once it is gone.
            until, kind, i, p = min(late, key=lambda entry: entry[0])
            who = {"acquisition": f"acquisition {self.cfg.cameras[i].camera_id}", "worker": f"inference worker {i}",
                   "publisher": "the verdict publisher"}[kind]
            log.error("%s (pid %d) missed its promised sign of life by %.1f s (stall_timeout_s %g): hung, killing it to "
                      "restart it", who, p.pid, (now - until) / 1e9, self.cfg.stall_timeout_s)
            self.shared.alive_until[self.shared.heartbeat_index(kind, i)] = 0  # once: its replacement promises anew
            self.shared.counters.add(0, "stalls")
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:  # it died on its own meanwhile
                pass

    def watchdog(self) -> None:
        """NOT_INSPECTED for frames past their deadline and for frames of dead workers (hung ones included:
        `_watch_stalls` kills them)."""
        deadline_ns = int(self.cfg.deadline_ms * 1e6)
        now = time.time_ns()
        dead = {w for w, p in enumerate(self.workers) if p is not None and not p.is_alive()}
        for cam, ring in enumerate(self.rings):
            h = ring.header
            for slot in range(len(h)):
                state, owner = h[slot]["state"], h[slot]["owner"]
                if state in (FREE, WRITING):
                    continue
                crashed = state == PROCESSING and owner in dead
                if h[slot]["done"] and not crashed:
                    continue
                if crashed or now - h[slot]["t_acq_ns"] > deadline_ns:
                    meta = (int(h[slot]["seq"]), int(h[slot]["frame_id"]), int(h[slot]["t_acq_ns"]), int(h[slot]["trigger"]))
                    # A queued (READY) frame past its deadline is dropped here; a PROCESSING one is
                    # freed by its worker, or here if that worker is dead.
                    if ring.claim_verdict(slot, release_if_state=(READY,)):
                        reason = Reason.WORKER_CRASH if crashed else Reason.DEADLINE
                        self.shared.not_inspected(0, cam, *meta[:3], reason, None if meta[3] < 0 else meta[3])
                    if crashed:
                        ring.release(slot)
        if self.publisher is not None and not self.publisher.is_alive() and not self.stopping:
            self._restart_publisher()
        for w in dead:
            if not self.stopping:
                self._worker_deaths.append(time.monotonic())
                _crash_loop(self._worker_deaths, self.cfg.worker_deaths_per_minute, 60, f"inference worker {w}", self.workers[w].exitcode,
                            "the bundle or its engines fail inside the worker: run `sclvi check` on this config")
                log.error("worker %d died (exit code %s): restarting", w, self.workers[w].exitcode)
                self.shared.counters.add(0, "worker_restarts")
                self._start_worker(w)
        for cam, p in enumerate(self.acquisition):
            if p is not None and not p.is_alive() and not self.shared.acq_done[cam] and not self.stopping:
                log.error("acquisition %s died (exit code %s): restarting", self.cfg.cameras[cam].camera_id, p.exitcode)
                if self.rings[cam].reclaim_writing():
                    log.error("acquisition %s died mid-write: its slot is free again, the frame gets NOT_INSPECTED (lost)",
                              self.cfg.cameras[cam].camera_id)
                self.shared.counters.add(0, "acquisition_restarts")
                self._start_acquisition(cam)

    def _restart_publisher(self) -> None:
        """Its journal holds every verdict not yet acknowledged: a new publisher resends them. One that
        keeps dying (a socket it cannot bind) stops the runtime instead of running with no way out."""
        _crash_loop(self._publisher_starts, 3, 30, "the verdict publisher", self.publisher.exitcode,
                    "check verdict_endpoint and telemetry_endpoint (its log above says why)")
        log.error("verdict publisher died (exit code %s): restarting it; it resends what the PLC has not acknowledged",
                  self.publisher.exitcode)
        self.shared.counters.add(0, "publisher_restarts")
        self._start_publisher()

    def status(self) -> dict[str, Any]:
        s = self.shared
        return {
            "running": not self.stopping,
            "paused": s.paused.is_set(),
            "thresholds": {"image": s.image_threshold.value, "pixel": s.pixel_threshold.value},
            "run": s.run_id,
            "publisher": {"pid": self.publisher.pid, "alive": self.publisher.is_alive()} if self.publisher else None,
            "workers": [{"pid": p.pid, "alive": p.is_alive()} for p in self.workers if p is not None],
            "cameras": [{"id": c.camera_id, "alive": p.is_alive() if p else False, "ended": bool(s.acq_done[i]),
                         "pid": p.pid if p else None, "seq": s.seq[i].value} for i, (c, p) in enumerate(zip(self.cfg.cameras, self.acquisition))],
            "counters": s.counters.totals(),
        }

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control commands: status, stats, set_threshold, pause, resume, reload (the last four need the token)."""
        if not isinstance(request, dict):
            return {"ok": False, "error": "bad request: expected a JSON object such as {\"cmd\": \"status\"}"}
        cmd = request.get("cmd")
        if cmd in MUTATING:
            token = self.cfg.control_token
            if token is None:
                return {"ok": False, "error": f"{cmd} is disabled: set control_token in the runtime config"}
            given = request.get("token")
            if not isinstance(given, str) or not hmac.compare_digest(given.encode(), token.encode()):
                log.warning("control: %s refused (missing or wrong token)", cmd)
                return {"ok": False, "error": f"{cmd} refused: missing or wrong token"}
        s = self.shared
        if cmd == "status":
            return self.status()
        if cmd == "stats":
            return s.counters.totals()
        if cmd == "set_threshold":
            new = {}
            for key in ("image", "pixel"):
                if key in request:
                    problem = check_threshold(key, request[key], self.calibration)
                    if problem:
                        return {"ok": False, "error": problem}
                    new[key] = float(request[key])
            if "image" in new:  # all validated first: a bad pixel value leaves the image threshold alone
                s.image_threshold.value = new["image"]
            if "pixel" in new:
                s.pixel_threshold.value = new["pixel"]
            log.info("thresholds set to image %.5g, pixel %.5g", s.image_threshold.value, s.pixel_threshold.value)
            return {"ok": True, "thresholds": {"image": s.image_threshold.value, "pixel": s.pixel_threshold.value}}
        if cmd in ("pause", "resume"):
            (s.paused.set if cmd == "pause" else s.paused.clear)()
            log.info("inspection %s", "paused (frames get NOT_INSPECTED)" if cmd == "pause" else "resumed")
            return {"ok": True, "paused": s.paused.is_set()}
        if cmd == "reload":
            try:
                bundle = open_bundle(self.cfg)
                camera_frames(self.cfg, bundle.config.geometry.frame)  # the cameras keep their size: refuse another
                image, pixel, self.calibration = _thresholds(self.cfg, bundle)
            except Exception as exc:
                return {"ok": False, "error": str(exc)}
            s.image_threshold.value, s.pixel_threshold.value = image, pixel
            with s.generation.get_lock():
                s.generation.value += 1
            return {"ok": True, "generation": s.generation.value}
        return {"ok": False, "error": f"unknown command {cmd!r}; use status, stats, set_threshold, pause, resume, reload"}

    def _serve_control(self) -> None:
        if self.control is None:
            return
        while self.control.poll(0, zmq.POLLIN):
            parts = self.control.recv_multipart()
            try:
                if len(parts) != 1:
                    raise ValueError(f"expected one message part, got {len(parts)}")
                reply = self.handle(json.loads(parts[0]))
            except (json.JSONDecodeError, TypeError, ValueError, UnicodeDecodeError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            except Exception:  # a control message must never take the line down
                log.exception("control: request failed")
                reply = {"ok": False, "error": "internal error (logged)"}
            self.control.send(json.dumps(reply).encode())

    def _idle(self) -> bool:
        return not any(r.busy() for r in self.rings)

    def run(self) -> dict[str, int]:
        """Run until SIGTERM/SIGINT, or until every (finite) source has ended and all frames are decided."""
        stop = {"now": False}

        def on_signal(signum: int, frame: Any) -> None:
            log.info("signal %d: shutting down", signum)
            stop["now"] = True

        # Signal handlers can only be installed from the main thread (embedding apps may run us elsewhere
        # and call shutdown() themselves).
        main = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
        try:
            self.start()  # inside the try: a worker that cannot start must not leave the others running
            while not stop["now"]:
                self.watchdog()
                self._serve_control()
                if all(self.shared.acq_done[c] for c in range(len(self.cfg.cameras))) and self._idle():
                    log.info("all sources ended and every frame has its verdict")
                    break
                time.sleep(0.005)
        finally:
            totals = self.shutdown()
            for s, h in old.items():
                signal.signal(s, h)
        return totals

    def shutdown(self) -> dict[str, int]:
        self.stopping = True
        self._stall_stop.set()
        if self._stall_thread is not None:
            self._stall_thread.join()
        s = self.shared
        s.stop.set()
        for p in self.acquisition:
            if p is not None:
                p.join(timeout=self.cfg.shutdown_timeout_s)
        end = time.monotonic() + self.cfg.shutdown_timeout_s
        while not self._idle() and time.monotonic() < end:  # in-flight frames finish or hit their deadline
            self.watchdog()
            time.sleep(0.005)
        s.stop_workers.set()
        for p in self.workers:
            if p is not None:
                _stop(p, 5)
        for cam, ring in enumerate(self.rings):  # anything still held gets its verdict
            for slot in range(len(ring.header)):
                h = ring.header[slot]
                if h["state"] in (READY, PROCESSING) and ring.claim_verdict(slot):
                    s.not_inspected(0, cam, int(h["seq"]), int(h["frame_id"]), int(h["t_acq_ns"]), Reason.SHUTDOWN)
        s.send(FLUSH)
        s.close_sender()
        if self.publisher is not None:
            if not self.publisher.is_alive() and self.publisher.exitcode != 0:
                self._start_publisher()  # it died during the shutdown: a new one flushes its journal
                s.send(FLUSH)
                s.close_sender()
            _stop(self.publisher, self.cfg.shutdown_timeout_s)
        for p in self.acquisition:
            if p is not None:
                _stop(p, 1)
        totals = s.counters.totals()
        self._release()
        log.info("runtime stopped: %s", {k: v for k, v in totals.items() if v})
        return totals
