"""Memory-bank file: a self-describing header, then the codes, then their grid positions.

    b"SCLVIBNK" | uint32 LE header length | JSON header | zero padding to 64 bytes
    codes      count x dim, dtype from the header (float32 or float16), C order
    positions  count x 2 int16: (row, col) of each code on its patch grid

The header says scale, patch, stride, grid, dim, count and dtype, so a bank file read on its own (on the
line PC, in a GPU process) is never misinterpreted. Both arrays are memory-mapped, not copied.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sclvi.errors import BundleError

MAGIC = b"SCLVIBNK"
VERSION = 1
_ALIGN = 64


@dataclass(frozen=True)
class BankHeader:
    scale: str  # "small" | "large"
    patch: int
    stride: int
    grid: int | list[int]  # [rows, cols] of one image's patch grid (an int: square, older banks)
    dim: int
    count: int
    dtype: str
    coreset_ratio: float = 1.0
    version: int = VERSION

    def codes_offset(self, header_len: int) -> int:
        raw = len(MAGIC) + 4 + header_len
        return (raw + _ALIGN - 1) // _ALIGN * _ALIGN

    def codes_bytes(self) -> int:
        return self.count * self.dim * np.dtype(self.dtype).itemsize


def write_bank(path: Path, codes: np.ndarray, positions: np.ndarray, header: BankHeader) -> None:
    codes = np.ascontiguousarray(codes, dtype=header.dtype)
    positions = np.ascontiguousarray(positions, dtype=np.int16)
    if codes.shape != (header.count, header.dim) or positions.shape != (header.count, 2):
        raise ValueError(f"codes {codes.shape} / positions {positions.shape} disagree with {header}")
    blob = json.dumps(asdict(header)).encode()
    offset = header.codes_offset(len(blob))
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.write(MAGIC + struct.pack("<I", len(blob)) + blob)
        f.write(b"\0" * (offset - f.tell()))
        f.write(codes.tobytes())
        f.write(positions.tobytes())
    tmp.replace(path)


def read_bank(path: Path) -> tuple[np.ndarray, np.ndarray, BankHeader]:
    """(codes, positions, header), memory-mapped read-only; a clear error for any damage."""
    if not path.is_file():
        raise BundleError(f"memory bank {path} is missing: rebuild it (sclvi train, or sclvi build-bank)")
    size = path.stat().st_size
    with path.open("rb") as f:
        start = f.read(len(MAGIC) + 4)
        if len(start) < len(MAGIC) + 4 or start[: len(MAGIC)] != MAGIC:
            raise BundleError(f"{path} is not an sclvi memory-bank file (bad magic): rebuild the bank")
        (n,) = struct.unpack("<I", start[len(MAGIC) :])
        try:
            header = BankHeader(**json.loads(f.read(n)))
        except (ValueError, TypeError) as exc:
            raise BundleError(f"{path} has a corrupt header ({exc}): rebuild the bank") from None
    if header.version != VERSION:
        raise BundleError(f"{path} is bank format {header.version}, this sclvi reads {VERSION}: rebuild the bank")
    offset = header.codes_offset(n)
    expected = offset + header.codes_bytes() + header.count * 4
    if size != expected:
        raise BundleError(
            f"{path} is {size} bytes but its header describes {expected} (truncated or corrupt): rebuild the bank"
        )
    codes = np.memmap(path, dtype=header.dtype, mode="r", offset=offset, shape=(header.count, header.dim))
    positions = np.memmap(path, dtype=np.int16, mode="r", offset=offset + header.codes_bytes(), shape=(header.count, 2))
    return codes, positions, header
