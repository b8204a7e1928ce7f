"""Which verdicts of a camera the bridge has written, so that a resend is recognised and nothing is skipped.

Sequence numbers are contiguous per (run, camera) from 1. A verdict is a duplicate only if *that* seq was
written: "seq <= the highest written" is not enough, because a verdict can overtake an earlier one (the
earlier one was sent into a bridge that was stopping, or its send failed while the bridge was down, and
the runtime resends it only after its ack timeout). Acknowledging such an earlier verdict as a duplicate
would lose it silently, so the seqs a later verdict jumped over are remembered as `missing`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

#: How many skipped seqs are remembered per camera; an even older verdict is written (a possible repeat,
#: never a loss).
MAX_MISSING = 1024


class Arrival(Enum):
    NEXT = "next"  # the seq after the highest written (or the first of a run)
    AHEAD = "ahead"  # overtook earlier seqs that were not written yet
    LATE = "late"  # an earlier seq that a later one overtook: not written yet
    DUPLICATE = "duplicate"  # written before: acknowledge without writing again


@dataclass
class CameraDelivery:
    run: str | None = None
    high: int = 0  # highest seq written in `run`
    missing: list[int] = field(default_factory=list)  # seqs below `high` not written
    block: list[int] | None = None  # registers of the last write while the PLC has not taken it (server modes)

    def arrival(self, run: str | None, seq: int) -> Arrival:
        if run != self.run:
            return Arrival.NEXT if seq == 1 else Arrival.AHEAD
        if seq == self.high + 1:
            return Arrival.NEXT
        if seq > self.high:
            return Arrival.AHEAD
        if seq in self.missing or seq < self.high - MAX_MISSING:
            return Arrival.LATE
        return Arrival.DUPLICATE

    def written(self, run: str | None, seq: int, block: list[int] | None) -> list[int]:
        """Record a write; returns the seqs it jumped over (now missing)."""
        if run != self.run:
            self.run, self.high, self.missing = run, 0, []
        skipped: list[int] = []
        if seq > self.high:
            skipped = list(range(max(self.high + 1, seq - MAX_MISSING), seq))
            self.missing = (self.missing + skipped)[-MAX_MISSING:]
            self.high = seq
        elif seq in self.missing:
            self.missing.remove(seq)
        self.block = block
        return skipped

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "CameraDelivery":
        if isinstance(data, list):  # the state file of earlier versions: [run, seq] + [block]
            return cls(run=data[0], high=int(data[1]), block=data[2] if len(data) > 2 else None)
        return cls(run=data.get("run"), high=int(data.get("high", 0)), missing=[int(s) for s in data.get("missing", [])],
                   block=data.get("block"))
