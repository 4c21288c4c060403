"""Files that grow: what succeeded jobs published of each file (its extent), so a later job loads only new lines.

A file's extent is the bytes [0, end) succeeded jobs published (decompressed bytes, for gzip), whose lines
are numbered 1 .. next_line - 1, with the CRC-32 of each piece they were read in. A later plan checks the
pieces again: unchanged, the file is cut from `end` on, its lines numbered from `next_line`; a piece that
changed is named, and the file is refused until it is loaded whole again (`--again`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import BinaryIO

import orjson

from k2jobs.plan.checksums import crc32_combine

Piece = tuple[int, int, int]  # start, end, CRC-32 of the bytes [start, end)
MAX_PIECES = 256  # more pieces than this are merged pairwise: a change is then named more coarsely
CHECKSUM_BLOCK = 8 << 20  # bytes read at a time while checksumming a published prefix


@dataclass(frozen=True)
class Extent:
    """What succeeded jobs published of one file."""

    end: int
    next_line: int
    newline: bool  # [0, end) ends with a line ending; if not, its last line may still grow
    pieces: tuple[Piece, ...]
    job_id: str

    @property
    def crc32(self) -> int:
        """The CRC-32 of the bytes [0, end)."""
        crc = 0
        for start, end, piece_crc in self.pieces:
            crc = crc32_combine(crc, piece_crc, end - start)
        return crc

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"end": self.end, "next_line": self.next_line, "newline": self.newline, "pieces": self.pieces,
             "job_id": self.job_id}
        )  # fmt: skip

    @classmethod
    def from_json(cls, raw: bytes) -> Extent:
        value = orjson.loads(raw)
        pieces = tuple((int(s), int(e), int(c)) for s, e, c in value["pieces"])
        return cls(int(value["end"]), int(value["next_line"]), bool(value["newline"]), pieces, str(value["job_id"]))

    def first_change(self, handle: BinaryIO) -> tuple[int, int] | None:
        """Read the published bytes from `handle` (at offset 0) piece by piece: the range of the first piece that
        changed or is missing, or None when all are as published (`handle` is then at `end`)."""
        for start, end, crc in self.pieces:
            got, left = 0, end - start
            while left:
                block = handle.read(min(left, CHECKSUM_BLOCK))
                if not block:
                    return start, end  # the file ends before this piece does
                got = zlib.crc32(block, got)
                left -= len(block)
            if got != crc:
                return start, end
        return None


def merged(pieces: list[Piece]) -> tuple[Piece, ...]:
    """`pieces`, adjacent pairs merged until there are at most MAX_PIECES."""
    while len(pieces) > MAX_PIECES:
        pairs = [pieces[i : i + 2] for i in range(0, len(pieces), 2)]
        pieces = [
            (pair[0][0], pair[-1][1], crc32_combine(pair[0][2], pair[1][2], pair[1][1] - pair[1][0]))
            if len(pair) == 2 else pair[0]
            for pair in pairs
        ]  # fmt: skip
    return tuple(pieces)
