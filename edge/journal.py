"""What the publisher owes the PLC, kept where a killed publisher cannot take it along.

`VerdictJournal`: every verdict is appended (unbuffered, so it reaches the page cache before it is
sent) and every acknowledgement too; a restarted publisher replays the file and resends what was never
acknowledged. The file is compacted when nothing is pending.

`SeqGaps`: sequence numbers are gap-free per camera, so a number that is skipped for longer than any
verdict can take (the deadline plus a grace) was lost on the way to the publisher (a publisher killed
with verdicts in its socket queue, an acquisition killed between taking a number and writing its frame).
Each such number gets a NOT_INSPECTED verdict (reason `lost`): the PLC rejects the part instead of
waiting forever or matching the next verdict to the wrong part.

`OwedVerdicts`: what a run still owed the PLC when it stopped (no bridge, a bridge that went away) is not
dropped with the run's private folder: its journal moves into `owed_dir` under the run's id, and the next
run's publisher resends those verdicts with their own run id (the bridge de-duplicates on (run, camera,
seq) and flags them late: the part has passed the gate, but the PLC's record is complete) until each one
is acknowledged.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger("sclvi.edge.journal")

#: Compact the journal once it is this large and nothing is pending.
COMPACT_BYTES = 4 * 2**20


class VerdictJournal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: Any = None

    def replay(self) -> tuple[OrderedDict[tuple[str, int], dict[str, Any]], dict[str, int]]:
        """(unacknowledged verdicts in send order, highest seq seen per camera) from a previous publisher."""
        pending: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        high: dict[str, int] = {}
        if self.path.exists():
            with self.path.open("rb") as f:
                try:
                    for rec in msgpack.Unpacker(f, raw=False):
                        kind = rec[0]
                        if kind == "v":
                            key = (rec[1]["camera"], rec[1]["seq"])
                            pending[key] = rec[1]
                            high[key[0]] = max(high.get(key[0], 0), key[1])
                        elif kind == "a":
                            pending.pop((rec[1], rec[2]), None)
                        elif kind == "h":
                            high[rec[1]] = max(high.get(rec[1], 0), rec[2])
                except (ValueError, msgpack.UnpackException, IndexError, KeyError, TypeError):
                    log.warning("verdict journal %s ends in a torn record (publisher killed mid-write)", self.path)
        self._rewrite(pending, high)
        return pending, high

    def _rewrite(self, pending: OrderedDict[tuple[str, int], dict[str, Any]], high: dict[str, int]) -> None:
        if self._file is not None:
            self._file.close()
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            for cam, seq in high.items():
                f.write(msgpack.packb(["h", cam, seq]))
            for msg in pending.values():
                f.write(msgpack.packb(["v", msg], use_bin_type=True))
        os.replace(tmp, self.path)
        self._file = self.path.open("ab", buffering=0)

    def verdict(self, msg: dict[str, Any]) -> None:
        self._file.write(msgpack.packb(["v", msg], use_bin_type=True))

    def ack(self, camera: str, seq: int) -> None:
        self._file.write(msgpack.packb(["a", camera, seq]))

    def maybe_compact(self, pending: OrderedDict[tuple[str, int], Any], high: dict[str, int]) -> None:
        if not pending and self._file is not None and self._file.tell() > COMPACT_BYTES:
            self._rewrite(OrderedDict(), high)

    def close(self, remove: bool) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if remove:
            self.path.unlink(missing_ok=True)


class OwedVerdicts:
    """Journals of earlier runs with verdicts still unacknowledged, one `<run id>.journal` per run in `folder`
    (the station's state directory: it outlives a run, a reboot and a new deployment of the runtime)."""

    SUFFIX = ".journal"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._journals: dict[str, VerdictJournal] = {}
        self._pending: dict[str, set[tuple[str, int]]] = {}

    def journals(self) -> list[Path]:
        """The kept journals, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"*{self.SUFFIX}"), key=lambda f: f.stat().st_mtime)

    def load(self, limit: int) -> list[dict[str, Any]]:
        """The verdicts earlier runs owe, oldest run first, at most `limit` (the rest wait for a later start);
        each keeps the run id it was sent with."""
        out: list[dict[str, Any]] = []
        for path in self.journals():
            run = path.name[: -len(self.SUFFIX)]
            journal = VerdictJournal(path)
            pending, _ = journal.replay()
            if not pending:
                journal.close(remove=True)
                continue
            self._journals[run], self._pending[run] = journal, set(pending)
            log.warning("resending %d verdicts run %s never had acknowledged (from %s)", len(pending), run, path)
            out += [{**msg, "run": run, "carried": True} for msg in pending.values()]  # the bridge: late, out of band
            if len(out) >= limit:
                break
        return out[:limit]

    def ack(self, run: str, camera: str, seq: int) -> None:
        """Record an acknowledgement; the journal of a run that owes nothing more is deleted."""
        journal = self._journals.get(run)
        if journal is None or (camera, seq) not in self._pending[run]:
            return
        journal.ack(camera, seq)
        self._pending[run].discard((camera, seq))
        if not self._pending[run]:
            journal.close(remove=True)
            del self._journals[run], self._pending[run]
            log.info("run %s owes the PLC nothing more", run)

    def keep(self, journal: VerdictJournal, run: str) -> Path:
        """Move this run's journal (closed) into the folder, for the next run to resend."""
        if not re.fullmatch(r"[\w.-]+", run):
            raise ValueError(f"run id {run!r} is not a file name")
        journal.close(remove=False)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.folder / f"{run}{self.SUFFIX}"
        shutil.move(journal.path, target)  # a rename on one file system, else copy then delete
        return target

    def close(self) -> None:
        for journal in self._journals.values():
            journal.close(remove=False)
        self._journals.clear()


class SeqGaps:
    """Per camera: the highest seq seen, and the skipped ones with when they were first missed."""

    def __init__(self, high: dict[str, int] | None = None) -> None:
        self.high: dict[str, int] = dict(high or {})
        self.missing: dict[tuple[str, int], float] = {}
        self.declared_lost: set[tuple[str, int]] = set()

    def seen(self, camera: str, seq: int, now: float | None = None) -> bool:
        """Record a verdict's seq; False if that seq was already declared lost (drop the late verdict)."""
        key = (camera, seq)
        if key in self.declared_lost:
            return False
        now = time.monotonic() if now is None else now
        top = self.high.get(camera, 0)
        for s in range(top + 1, seq):
            self.missing[(camera, s)] = now
        self.high[camera] = max(top, seq)
        self.missing.pop(key, None)
        return True

    def expect(self, camera: str, last_seq: int, now: float | None = None) -> None:
        """Numbers up to `last_seq` were handed out (the shared counter): any not seen yet is missing."""
        now = time.monotonic() if now is None else now
        top = self.high.get(camera, 0)
        for s in range(top + 1, last_seq + 1):
            self.missing.setdefault((camera, s), now)
        if last_seq > top:
            self.high[camera] = last_seq

    def overdue(self, grace_s: float, now: float | None = None) -> list[tuple[str, int]]:
        """Missing numbers older than `grace_s`, now declared lost (each returned once)."""
        now = time.monotonic() if now is None else now
        lost = sorted(k for k, t in self.missing.items() if now - t > grace_s)
        for k in lost:
            del self.missing[k]
            self.declared_lost.add(k)
        return lost
