"""How every runtime child process starts: timestamped logging, the supervisor owns shutdown, and the
child dies with the supervisor (no orphans grabbing frames or holding the camera after it is gone)."""

import ctypes
import logging
import os
import signal
import sys

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
PR_SET_PDEATHSIG = 1


def setup_child_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(format=FORMAT, datefmt="%Y-%m-%d %H:%M:%S", level=level, force=True)


def child_process_setup() -> None:
    """Logging; SIGINT/SIGTERM ignored (the supervisor coordinates shutdown, and systemd signals the
    whole group); SIGKILL when the supervisor dies, through the Linux parent-death signal (it fires when
    the supervisor's thread that started the child ends: Runtime.run starts and restarts every child from
    the one thread that runs it to the end)."""
    setup_child_logging()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before the line above
            os._exit(1)
