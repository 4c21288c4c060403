"""Cutting a file's bytes into chunks of whole lines, and resuming after what an earlier job loaded."""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, BinaryIO

from k2jobs.plan.checksums import crc32_combine
from k2jobs.plan.model import ChunkPlan, like

if TYPE_CHECKING:
    from k2jobs.plan.extents import Extent

try:
    from k2jobs.rows._fastrows import scan_lines as _compiled_scan_lines
except ImportError:  # installed without a C compiler: planning counts lines in Python
    _compiled_scan_lines = None

BOM = b"\xef\xbb\xbf"
_BLANK_BETWEEN = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")
READ_BLOCK = 32 << 20  # more than a default chunk's bytes: most chunks are cut from one read, not spliced

UNCHANGED, CHANGED = "unchanged", "changed"
Skipped = tuple[str, str]  # (UNCHANGED or CHANGED, what to say about the file)


def _after_lines(buf: bytes, start: int, lines: int, guess: float) -> int:
    """Offset just past the `lines`-th line end from `start`, or len(buf) if fewer remain.

    `guess` is the average line length so far: one count over about a chunk's bytes, then a few steps.
    """
    end = min(len(buf), start + int(lines * guess))
    found = buf.count(b"\n", start, end)
    while found > lines + 64:  # far past: cut the window back in proportion, counting only what is cut off
        cut = start + (end - start) * lines // found
        found, end = found - buf.count(b"\n", cut, end), cut
    if found >= lines:
        for _ in range(found - lines):
            end = buf.rfind(b"\n", start, end)
        return buf.rfind(b"\n", start, end) + 1
    while found < lines:
        pos = buf.find(b"\n", end)
        if pos < 0:
            return len(buf)
        end, found = pos + 1, found + 1
    return end


def _scan_lines_python(data: bytes, pos: int, lines: int) -> tuple[int, int, int]:
    """_fastrows.scan_lines in Python (the same answer, slower): (end, line endings, blank lines among them)."""
    endings = min(lines, data.count(b"\n", pos))
    end = _after_lines(data, pos, endings, 64.0) if endings else pos
    piece = data[pos:end]
    maybe_blank = _BLANK_BETWEEN.search(piece) is not None or (piece[:1].isspace())
    blank = sum(1 for line in piece.split(b"\n")[:-1] if not line.strip()) if maybe_blank else 0
    return end, endings, blank


scan_lines = _compiled_scan_lines or _scan_lines_python


def cut_ranges(
    handle: io.BufferedReader,
    lines_per_chunk: int,
    block: int = READ_BLOCK,
    offset: int = 0,
    line: int = 1,
    complete_only: bool = False,
) -> Iterator[tuple[int, bytes, int, int, int]]:
    """(file offset, bytes, first line number, line endings in it, rows in it) per chunk, streaming the file in
    blocks from where `handle` is: file offset `offset`, line number `line`. With `complete_only`, a last line
    without its line ending is left out (it is still being written). A row is a line that is not blank.

    Every byte is scanned once (scan_lines, compiled: it releases the GIL), but for a line cut by a block's end.
    """
    data = handle.read(block)
    if offset == 0 and data.startswith(BOM):
        data, offset = data[len(BOM) :], len(BOM)
    pos, eof = 0, not data
    while True:
        end, endings, blank = scan_lines(data, pos, lines_per_chunk)
        while endings < lines_per_chunk and not eof:
            more = handle.read(block)
            eof = not more
            if more:  # keep what is not cut yet, and scan on from the last line ending found
                data, offset, end, pos = data[pos:] + more, offset + pos, end - pos, 0
                end, found, more_blank = scan_lines(data, end, lines_per_chunk - endings)
                endings, blank = endings + found, blank + more_blank
        rows = endings - blank
        if endings < lines_per_chunk and end < len(data) and not complete_only:  # the file's last line, unended
            rows += 1 if data[end:].strip() else 0
            end = len(data)
        if end <= pos:
            return
        yield offset + pos, data[pos:end], line, endings, rows
        line, pos = line + endings, end


@dataclass
class Cut:
    """A file cut into chunks: the chunks, the CRC-32 and length of its bytes [0, size), the (start, end, CRC-32) of
    each piece read, the number of the line after them, and whether they end with a line ending."""

    chunks: list[ChunkPlan]
    crc: int | None  # None: nothing but (at most) a byte-order mark
    size: int
    pieces: list[list[int]]  # of the bytes [0, size): those published before `start` too
    next_line: int
    newline: bool
    start: int = 0  # where this cut started (after what was published)
    first_line: int = 1


def cut_file(
    handle: BinaryIO,
    lines_per_chunk: int,
    first_index: int,
    base: ChunkPlan,
    offset: int = 0,
    line: int = 1,
    prefix_crc: int | None = None,
    complete_only: bool = False,
    block: int = READ_BLOCK,
) -> Cut:
    """Cut an open file (decompressed, for gzip) into chunks like `base`, counting rows and checksumming each,
    from where `handle` is (`offset`, line `line`; `prefix_crc`: the CRC-32 of the bytes before), reading
    `block` bytes at a time. Pieces of blank lines only are counted but make no chunk."""
    chunks: list[ChunkPlan] = []
    pieces: list[list[int]] = []
    file_crc, size, next_line, newline = prefix_crc, offset, line, True
    for start, piece, first_line, endings, rows in cut_ranges(
        handle,  # type: ignore[arg-type]
        lines_per_chunk,
        block,
        offset=offset,
        line=line,
        complete_only=complete_only,
    ):
        piece_crc = zlib.crc32(piece)
        if file_crc is None:  # the first piece starts after the byte-order mark, if there is one
            file_crc = zlib.crc32(BOM) if start == len(BOM) else 0
            if start == len(BOM):
                pieces.append([0, start, file_crc])
        file_crc = crc32_combine(file_crc, piece_crc, len(piece))
        size = start + len(piece)
        pieces.append([start, size, piece_crc])
        newline = piece.endswith(b"\n")
        next_line = first_line + endings + (0 if newline else 1)
        if rows == 0:
            continue  # only blank lines: nothing to load, nothing to count
        chunks.append(
            like(
                base,
                index=first_index + len(chunks),
                start=start,
                end=start + len(piece),
                first_line=first_line,
                rows=rows,
                crc32=piece_crc,
            )
        )
    return Cut(chunks, file_crc, size, pieces, next_line, newline)


def cut_after(
    handle: BinaryIO,
    lines_per_chunk: int,
    first_index: int,
    base: ChunkPlan,
    extent: Extent | None,
    complete_only: bool,
    block: int = READ_BLOCK,
) -> Cut | Skipped:
    """cut_file on a file (or object) read from its start, from where `extent` (what succeeded jobs published of it)
    ends; without an extent, the whole file. Or why it is not to be loaded: nothing new, or what changed."""
    if extent is None:
        return cut_file(handle, lines_per_chunk, first_index, base, complete_only=complete_only, block=block)
    resumed = resume_after(handle, extent, base.path)
    if len(resumed) == 2:
        return resumed  # type: ignore[return-value]
    offset, line, prefix_crc, pieces = resumed  # type: ignore[misc]
    cut = cut_file(handle, lines_per_chunk, first_index, base, offset, line, prefix_crc, complete_only, block)
    if not cut.chunks:
        return UNCHANGED, f"{base.path} (published by job {extent.job_id})"
    return replace(cut, pieces=pieces + cut.pieces, start=offset, first_line=line)


def resume_after(handle: BinaryIO, extent: Extent, relative: str) -> tuple[int, int, int, list[list[int]]] | Skipped:
    """Check a file's published part (`extent`) as `handle` reads it from the start. As published: where to cut
    from (offset, line number, CRC-32 of the bytes before, their pieces). Otherwise why it is not loaded."""
    changed = extent.first_change(handle)
    since = f"since job {extent.job_id} published them (--again loads the whole file again)"
    if changed is not None:
        return CHANGED, f"{relative}: bytes {changed[0]}-{changed[1]} changed {since}"
    pieces = [list(p) for p in extent.pieces]
    offset, crc = extent.end, extent.crc32
    if not extent.newline:  # the last published line had no line ending: only one may follow it
        ending = handle.read(2)
        if not ending:
            return UNCHANGED, f"{relative} (published by job {extent.job_id})"
        if not (ending.startswith(b"\n") or ending == b"\r\n"):
            start = pieces[-1][0]
            return CHANGED, f"{relative}: bytes {start}-{extent.end} changed {since}: its last line went on"
        ending = ending[:1] if ending.startswith(b"\n") else ending
        pieces.append([offset, offset + len(ending), zlib.crc32(ending)])
        crc, offset = crc32_combine(crc, zlib.crc32(ending), len(ending)), offset + len(ending)
        handle.seek(offset)
    return offset, extent.next_line, crc, pieces
