"""The state the runtime's processes share: rings, counters, flags (all picklable at spawn).

Verdicts travel from every process to the publisher over a ZeroMQ PUSH -> PULL ipc socket rather than a
multiprocessing queue: a process that dies while sending cannot leave a lock held for the others.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from sclvi.edge.counters import Counters
from sclvi.edge.messages import Reason, Verdict, verdict_message
from sclvi.edge.ring_lock import RobustLock
from sclvi.edge.ring import RingSpec

FLUSH = {"flush": True}  # tells the publisher to send what is pending and stop


@dataclass
class Shared:
    rings: list[RingSpec]
    runtime_dir: str  # private (0700) folder of this run: the internal socket and the journal
    results_endpoint: str  # ipc:// PULL socket of the publisher
    journal_path: str  # the publisher's verdict journal (survives a killed publisher)
    run_id: str  # stamped on every verdict: sequence numbers restart with each run
    counters: Counters
    stop: Any  # Event: stop grabbing
    stop_workers: Any  # Event: workers exit when the rings are empty
    paused: Any  # Event: grab, but do not inspect (NOT_INSPECTED, reason paused)
    image_threshold: Any  # Value('d')
    pixel_threshold: Any  # Value('d')
    generation: Any  # Value('i'): bumped by `reload`
    seq: list[Any]  # Value('q') per camera: sequence numbers survive an acquisition restart
    acq_done: Any  # Array('i') per camera: the finite source has ended
    workers_ready: Any  # Array('i') per worker: model loaded, taking frames
    alive_until: Any  # Array('q'): per camera's acquisition, per worker, then the publisher: the monotonic ns by which
    # it beats again
    camera_ids: list[str] = field(default_factory=list)
    _push: Any = field(default=None, repr=False)  # this process's PUSH socket, made on first use

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_push"] = None  # sockets do not cross processes
        return state

    def row_acquisition(self, cam: int) -> int:
        return 1 + cam

    def row_worker(self, w: int) -> int:
        return 1 + len(self.rings) + w

    def row_publisher(self, workers: int) -> int:
        return 1 + len(self.rings) + workers

    def beat(self, index: int, allowance_s: float) -> None:
        """Promise the supervisor another heartbeat within `allowance_s`: a process that breaks the promise (hung in
        a driver call, a lock, an endless loop) is killed and restarted like a dead one (Runtime.watchdog).
        `index`: from `heartbeat_index`."""
        self.alive_until[index] = time.monotonic_ns() + int(allowance_s * 1e9)

    def heartbeat_index(self, kind: str, i: int = 0) -> int:
        """Slot of camera `i`'s acquisition (kind `acquisition`), of worker `i` (kind `worker`) or of the publisher
        (kind `publisher`, the last slot) in alive_until."""
        if kind == "publisher":
            return len(self.alive_until) - 1
        return i if kind == "acquisition" else len(self.rings) + i

    def send(self, msg: dict[str, Any]) -> None:
        """Hand a verdict to the publisher (never blocks for long: local ipc, large high-water mark)."""
        import zmq

        if self._push is None:
            sock = zmq.Context.instance().socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 2000)  # a clean exit still delivers what is queued
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.connect(self.results_endpoint)
            self._push = sock
        import msgpack

        self._push.send(msgpack.packb(msg, use_bin_type=True))

    def close_sender(self) -> None:
        if self._push is not None:
            self._push.close()
            self._push = None

    def not_inspected(self, row: int, cam: int, seq: int, frame_id: int, t_acq_ns: int, reason: Reason, trigger: int | None = None) -> None:
        """Emit a NOT_INSPECTED verdict (the PLC rejects it by default) and count it."""
        self.send(verdict_message(self.camera_ids[cam], seq, frame_id, t_acq_ns, Verdict.NOT_INSPECTED,
                                  trigger=trigger, reason=reason))
        self.counters.add(row, "not_inspected")
        self.counters.add(row, f"nis_{reason.value}")


def make_shared(camera_ids: list[str], slots: int, slot_bytes: list[int], workers: int, thresholds: tuple[float, float]) -> Shared:
    ctx = mp.get_context("spawn")
    # pid + a random part: a stale segment of a SIGKILLed supervisor whose pid comes back, or a second
    # runtime in the same process, cannot collide with this one's rings
    tag = f"sclvi-{os.getpid()}-{secrets.token_hex(3)}"
    rundir = tempfile.mkdtemp(prefix=f"{tag}-")  # mode 0700: no other local user can inject verdicts
    rings = [RingSpec(f"{tag}-{i}", slots, b, RobustLock(f"{rundir}/ring-{i}.lock")) for i, b in enumerate(slot_bytes)]
    return Shared(
        rings=rings, runtime_dir=rundir, results_endpoint=f"ipc://{rundir}/results", journal_path=f"{rundir}/journal",
        run_id=f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}",
        counters=Counters(2 + len(rings) + workers, ctx),
        stop=ctx.Event(), stop_workers=ctx.Event(), paused=ctx.Event(), image_threshold=ctx.Value("d", thresholds[0]),
        pixel_threshold=ctx.Value("d", thresholds[1]), generation=ctx.Value("i", 0),
        seq=[ctx.Value("q", 0) for _ in camera_ids],
        # one writer per entry at a time (aligned word writes): no lock, which a process killed while holding it would
        # leave taken for good (the hazard edge/ring_lock.py removes from the rings); alive_until is written on
        # every worker loop, so a lock there would also sit on the hot path
        acq_done=ctx.Array("i", len(camera_ids), lock=False), workers_ready=ctx.Array("i", workers, lock=False),
        alive_until=ctx.Array("q", len(camera_ids) + workers + 1, lock=False), camera_ids=camera_ids,
    )
