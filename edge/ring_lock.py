"""The frame ring's lock, safe against a process killed while holding it.

A multiprocessing.Lock is a POSIX semaphore: a worker SIGKILLed inside the few instructions it holds it
for (the worker polls the ring while idle, so that window is hit now and then) leaves it taken for ever,
and acquisition, the restarted worker and the line stop with the supervisor still reporting "running"
(CI caught it: `test_crashed_worker_is_restarted_and_no_frame_is_lost` stuck after seq 2). An flock()
on a file is released by the kernel when its holder dies. flock excludes open file descriptions, not
threads, so each process opens its own descriptor and a thread lock orders the threads of one process.

A process waiting for the lock is not hung, its holder may be: the waiter polls and calls `on_wait` (set per
process: acquisition and workers renew their heartbeat there), so the stall watch kills the stopped holder and
not the camera blocked behind it (CI caught that too: a SIGSTOPped worker holding the lock got the innocent
acquisition killed first, costing a frame).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from typing import Any


class RobustLock:
    def __init__(self, path: str) -> None:
        self.path = path
        open(path, "ab").close()  # noqa: SIM115 - created once by the supervisor; each process opens its own
        self._fd: int | None = None
        self._pid = -1
        self._thread_lock = threading.Lock()
        self.on_wait: Callable[[], None] | None = None  # called while another process holds the lock

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR)
            self._pid = os.getpid()
        return self._fd

    def __enter__(self) -> "RobustLock":
        self._thread_lock.acquire()
        try:
            fd, pause = self._descriptor(), 0.0001
            while True:  # held for a few instructions: the first try nearly always wins
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self.on_wait is not None:
                        self.on_wait()
                    time.sleep(pause)
                    pause = min(2 * pause, 0.005)
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict[str, Any]:  # sent to spawned processes: they open their own descriptor
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self._fd, self._pid, self._thread_lock = state["path"], None, -1, threading.Lock()
        self.on_wait = None
