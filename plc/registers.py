"""The Modbus register map of one camera's verdict block (documented in deploy/PLC.md).

Every value is a 16-bit holding register; 32-bit values take two registers, high word first. The
block is written fields first and the `new` flag last, so a PLC that sees new = 1 reads a whole verdict.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from sclvi.edge.messages import Reason, Verdict

#: Registers per camera block (fields + room to grow); camera i starts at base + i * BLOCK.
BLOCK = 32
NEW, VERDICT, REJECT, REASON = 0, 1, 2, 3
SEQ, RUN, FRAME_ID, TRIGGER, SCORE = 4, 6, 8, 10, 12
REGIONS, FLAGS, COUNT = 14, 15, 16
FIELDS = 18  # registers in use
VERDICT_CODES = {Verdict.OK.value: 1, Verdict.NG.value: 2, Verdict.NOT_INSPECTED.value: 3}
REASON_CODES = {r.value: i + 1 for i, r in enumerate(Reason)}
FLAG_LATE, FLAG_OVERRUN = 1, 2
NONE32 = 0xFFFFFFFF


def _u32(value: int) -> list[int]:
    value &= 0xFFFFFFFF
    return [value >> 16, value & 0xFFFF]


def run_code(run: str | None) -> int:
    """The run id as a 32-bit number (CRC-32): enough to see that a new run started."""
    return zlib.crc32((run or "").encode())


@dataclass(frozen=True)
class Block:
    """One verdict as the PLC reads it."""

    registers: list[int]  # FIELDS values starting at the camera's base address
    reject: bool

    @classmethod
    def encode(cls, v: dict[str, Any], count: int, reject_not_inspected: bool, flags: int) -> "Block":
        verdict = v["verdict"]
        reject = verdict == Verdict.NG.value or (verdict == Verdict.NOT_INSPECTED.value and reject_not_inspected)
        score = v.get("score")
        regs = [0] * FIELDS
        regs[NEW] = 1
        regs[VERDICT] = VERDICT_CODES[verdict]
        regs[REJECT] = int(reject)
        regs[REASON] = REASON_CODES.get(v.get("reason") or "", 0)
        regs[SEQ:SEQ + 2] = _u32(v["seq"])
        regs[RUN:RUN + 2] = _u32(run_code(v.get("run")))
        regs[FRAME_ID:FRAME_ID + 2] = _u32(v.get("frame_id", 0))
        trigger = v.get("trigger")
        regs[TRIGGER:TRIGGER + 2] = _u32(NONE32 if trigger is None else trigger)
        regs[SCORE:SCORE + 2] = _u32(NONE32 if score is None else min(int(round(score * 1000)), NONE32 - 1))
        regs[REGIONS] = min(len(v.get("regions") or []), 0xFFFF)
        regs[FLAGS] = flags
        regs[COUNT:COUNT + 2] = _u32(count)
        return cls(regs, reject)


def u32(regs: list[int], i: int) -> int:
    """The 32-bit value in registers i, i + 1 (high word first)."""
    return (regs[i] << 16) | regs[i + 1]


def decode(regs: list[int]) -> dict[str, Any]:
    """What a PLC reads back (tests, `sclvi demo`)."""
    verdicts = {c: v for v, c in VERDICT_CODES.items()}
    reasons = {c: r for r, c in REASON_CODES.items()}
    score = u32(regs, SCORE)
    trigger = u32(regs, TRIGGER)
    return {
        "new": regs[NEW], "verdict": verdicts.get(regs[VERDICT]), "reject": bool(regs[REJECT]),
        "reason": reasons.get(regs[REASON]), "seq": u32(regs, SEQ), "run_code": u32(regs, RUN), "frame_id": u32(regs, FRAME_ID),
        "trigger": None if trigger == NONE32 else trigger, "score": None if score == NONE32 else score / 1000,
        "regions": regs[REGIONS], "late": bool(regs[FLAGS] & FLAG_LATE), "overrun": bool(regs[FLAGS] & FLAG_OVERRUN),
        "count": u32(regs, COUNT),
    }
