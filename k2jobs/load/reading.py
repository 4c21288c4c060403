"""A chunk's bytes: read from a local file, an object or a gzip member, and checked against its plan."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from k2jobs.errors import ChunkChanged
from k2jobs.plan.model import ChunkPlan
from k2jobs.sources.gz import GzipDamaged, open_gzip, read_range
from k2jobs.sources.layout import InsideRoot
from k2jobs.sources.s3 import is_object_url, read_object_chunk


def read_chunk(
    data_root: Path, chunk: ChunkPlan, inside: InsideRoot | None = None, gzip_indexes: dict[str, bytes] | None = None
) -> bytes:
    """The chunk's bytes (decompressed, for a .csv.gz file: from the point its gzip index names), refused if the
    file moved outside the root, or its size or the chunk's checksum changed, or its gzip data is damaged."""
    if is_object_url(chunk.data_path):
        return checked(chunk, read_object_chunk(chunk, gzip_indexes))  # size, ETag and damage checked there
    path = (inside or InsideRoot(data_root))(data_root / chunk.data_path)
    try:
        if chunk.compression:
            same_size(chunk, os.stat(path).st_size)
            with open_gzip(path, (gzip_indexes or {}).get(chunk.data_path)) as reader:
                data = read_range(reader, chunk.start, chunk.end, chunk.path)
        else:
            data = read_range_of(path, chunk)
    except GzipDamaged as exc:
        raise ChunkChanged(f"{exc}: its chunk was not loaded") from exc
    except OSError as exc:
        raise ChunkChanged(f"{chunk.path}: cannot be read any more ({exc.strerror or exc})") from exc
    return checked(chunk, data)


def same_size(chunk: ChunkPlan, size: int) -> None:
    """Refuse a file whose size changed since submit. Content, not modification time, is compared: a copy of the
    data (another mount, rsync) has other times, the same bytes."""
    if size != chunk.file_size:
        raise ChunkChanged(
            f"{chunk.path} changed after submit (size {chunk.file_size} -> {size}): its chunk was not loaded"
        )


def read_range_of(path: Path, chunk: ChunkPlan) -> bytes:
    """A plain file's chunk bytes, refused if the file's size changed: open, fstat, pread, close (a buffered file
    stats the path, seeks, and reads again to find the end: thousands of small files' chunks in one task)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        same_size(chunk, os.fstat(fd).st_size)
        want = chunk.end - chunk.start
        data = os.pread(fd, want, chunk.start)
        while len(data) < want:  # a short read; at the file's end, the checksum says what is missing
            more = os.pread(fd, want - len(data), chunk.start + len(data))
            if not more:
                break
            data += more
        return data
    finally:
        os.close(fd)


def checked(chunk: ChunkPlan, data: bytes) -> bytes:
    """`data`, refused unless it is the chunk's bytes as planned (their CRC-32)."""
    if zlib.crc32(data) != chunk.crc32:
        raise ChunkChanged(f"{chunk.path} bytes {chunk.start}-{chunk.end} changed after submit (checksum)")
    return data
