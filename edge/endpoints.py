"""Local endpoints: the control socket is an `ipc://` socket in a private station folder by default, so only
this user's processes (and root) can reach it — no TCP port another local user or a container could talk to.

The folder is 0700 and the socket file 0600. ZeroMQ silently unlinks an existing ipc socket file when a second
process binds the same path, which would steal a running station's control socket: a lock file held for the
runtime's life makes the second bind fail instead.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from sclvi.errors import ConfigError


def station_dir() -> Path:
    """Where a station's local sockets live: $SCLVI_RUNTIME_DIR, else $XDG_RUNTIME_DIR/sclvi (systemd gives
    each user one, 0700), else a per-user folder in the temp dir."""
    if os.environ.get("SCLVI_RUNTIME_DIR"):
        return Path(os.environ["SCLVI_RUNTIME_DIR"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "sclvi"
    return Path(tempfile.gettempdir()) / f"sclvi-{os.getuid()}"


def default_control_endpoint() -> str:
    return f"ipc://{station_dir() / 'control'}"


def ipc_path(endpoint: str | None) -> Path | None:
    """The socket file of an ipc:// endpoint, None for any other."""
    if endpoint and endpoint.startswith("ipc://"):
        return Path(endpoint[len("ipc://"):])
    return None


def private_folder(folder: Path) -> None:
    """Create `folder` 0700, or check that an existing one is ours and not open to others."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = folder.stat()
    if st.st_uid != os.getuid():
        raise ConfigError(f"{folder} belongs to another user: its sockets are not private (set SCLVI_RUNTIME_DIR)")
    if stat.S_IMODE(st.st_mode) & 0o077:
        folder.chmod(0o700)


def _exclusive(lock_path: Path, refusal: str) -> IO[bytes]:
    """A lock file held for the runtime's life (it goes with the process, however it ends); ConfigError
    `refusal` when another runtime holds it."""
    lock = open(lock_path, "wb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigError(refusal) from None
    return lock


class IpcClaim:
    """Hold an ipc:// endpoint for one runtime: private folder, and a lock so a second runtime is refused. Not an
    ipc:// endpoint: nothing to do."""

    def __init__(self, endpoint: str | None) -> None:
        self.path = ipc_path(endpoint)
        self._lock: IO[bytes] | None = None
        if self.path is None:
            return
        private_folder(self.path.parent)
        self._lock = _exclusive(self.path.with_name(self.path.name + ".lock"),
                                f"{endpoint} is served by another sclvi runtime (lock held): stop it, or give this "
                                "one another control_endpoint")

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class FolderClaim(IpcClaim):
    """Hold a state folder (`owed_dir`) for one runtime: two runtimes resending each other's verdicts would
    send them twice and delete each other's journals."""

    def __init__(self, folder: str) -> None:
        self.path = Path(folder)
        private_folder(self.path)
        self._lock = _exclusive(self.path / ".lock", f"owed_dir {folder} is used by another sclvi runtime (lock held): "
                                "give each runtime its own")


def restrict(endpoint: str | None) -> None:
    """After binding an ipc:// endpoint: only this user may connect to its socket file."""
    path = ipc_path(endpoint)
    if path is not None and path.exists():
        path.chmod(0o600)


def endpoint_free(endpoint: str) -> bool:
    """Is an ipc:// endpoint free to serve (no runtime holds its lock)? Checked without binding: a bind would
    unlink a running station's socket."""
    try:
        IpcClaim(endpoint).release()
        return True
    except ConfigError:
        return False


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (the demo's and the tests' endpoints): every socket is held until
    all are bound, so the kernel cannot hand the same port out twice (one free_port() after another can, which
    the runtime rejects as shared endpoints)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]
