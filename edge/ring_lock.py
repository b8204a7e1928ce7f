"""The frame ring's lock, safe against a process killed while holding it.

A multiprocessing.Lock is a POSIX semaphore: a worker SIGKILLed inside the few instructions it holds it
for (the worker polls the ring while idle, so that window is hit now and then) leaves it taken for ever,
and acquisition, the restarted worker and the line stop with the supervisor still reporting "running"
(CI caught it: `test_crashed_worker_is_restarted_and_no_frame_is_lost` stuck after seq 2). An flock()
on a file is released by the kernel when its holder dies. flock excludes open file descriptions, not
threads, so each process opens its own descriptor and a thread lock orders the threads of one process.
"""

from __future__ import annotations

import fcntl
import os
import threading
from typing import Any


class RobustLock:
    def __init__(self, path: str) -> None:
        self.path = path
        open(path, "ab").close()  # noqa: SIM115 - created once by the supervisor; each process opens its own
        self._fd: int | None = None
        self._pid = -1
        self._thread_lock = threading.Lock()

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR)
            self._pid = os.getpid()
        return self._fd

    def __enter__(self) -> "RobustLock":
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
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
