"""gzip input: one pass at submit builds an index of decompression points; a chunk seeks to its point.

Chunks of a `.csv.gz` file are ranges of its decompressed bytes, cut on line boundaries like a plain file's.
The index (indexed_gzip's, a seek point every GZIP_SPACING decompressed bytes, each with the 32 KiB of data
before it) is built while planning reads the file once, kept in Redis with the job, and lets a worker start
inflating at most GZIP_SPACING bytes before its chunk instead of at the file's start.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from k2jobs.errors import K2Error

if TYPE_CHECKING:
    import indexed_gzip

GZIP = "gzip"  # ChunkPlan.compression
GZIP_SUFFIX = ".csv.gz"
GZIP_SPACING = 4 << 20  # decompressed bytes between seek points: the most a chunk inflates before its start


def damaged_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged gzip raises: indexed_gzip's own errors (ZranError is an OSError), zlib's, a short
    read. indexed_gzip is imported when a gzip file is met: a load of plain files need not pay for it at submit."""
    import indexed_gzip

    return (indexed_gzip.ZranError, indexed_gzip.NotCoveredError, zlib.error, EOFError, ValueError)


class GzipDamaged(K2Error):
    """A gzip file that cannot be decompressed where it is read (corrupt or truncated)."""


def open_gzip(source: Path | BinaryIO, index: bytes | None = None) -> indexed_gzip.IndexedGzipFile:
    """An indexed reader of `source` (a path, or a binary file object: a ranged object-storage reader),
    starting from `index` if given (no seek point is built then: the index covers the whole file)."""
    import indexed_gzip

    if isinstance(source, Path):
        reader = indexed_gzip.IndexedGzipFile(filename=str(source), drop_handles=False, spacing=GZIP_SPACING)
    else:
        reader = indexed_gzip.IndexedGzipFile(fileobj=source, spacing=GZIP_SPACING)
    if index:
        reader.import_index(fileobj=io.BytesIO(index))
    return reader


def export_index(reader: indexed_gzip.IndexedGzipFile) -> bytes:
    """The seek points `reader` built while it was read to its end, as bytes."""
    out = io.BytesIO()
    reader.export_index(fileobj=out)
    return out.getvalue()


def check_complete(handle: BinaryIO, compressed_size: int, size: int, crc: int, name: str) -> None:
    """Raise GzipDamaged unless the gzip file open as `handle` ends where its data does: indexed_gzip reads a
    truncated file to where it stops, silently. `size` and `crc` are of everything decompressed from it.

    The last member's trailer (CRC-32 and length of its data) matches the whole data for a file of one member;
    otherwise (several members, or a mismatch) the file is inflated once more with zlib, which knows a complete
    stream from a cut one.
    """
    handle.seek(max(0, compressed_size - 8))
    trailer = handle.read(8)
    if len(trailer) == 8 and trailer == struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF):
        return
    handle.seek(0)
    _inflate_all(handle, name)


def _inflate_all(handle: BinaryIO, name: str) -> None:
    """Inflate every gzip member of `handle`; GzipDamaged if the last one is cut short or the data is corrupt."""
    inflater, fed = zlib.decompressobj(wbits=31), False
    try:
        while block := handle.read(1 << 20):
            while block:
                inflater.decompress(block)
                fed, block = True, inflater.unused_data
                if inflater.eof:  # the next member, if any; zero padding after the last one is allowed
                    inflater, fed = zlib.decompressobj(wbits=31), False
                    block = b"" if block.strip(b"\0") == b"" else block
    except zlib.error as exc:
        raise GzipDamaged(f"{name}: gzip data is corrupt or truncated ({exc})") from exc
    if fed:
        raise GzipDamaged(f"{name}: gzip data is corrupt or truncated (its last member ends early)")


def read_range(reader: indexed_gzip.IndexedGzipFile, start: int, end: int, name: str) -> bytes:
    """Decompressed bytes [start, end) of an indexed gzip file; GzipDamaged names `name` if they cannot be."""
    try:
        reader.seek(start)
        data = reader.read(end - start)
    except damaged_errors() as exc:
        raise GzipDamaged(
            f"{name}: gzip data is corrupt or truncated before byte {end:,} (decompressed): {exc}"
        ) from exc
    if len(data) != end - start:
        raise GzipDamaged(f"{name}: gzip data ends at decompressed byte {start + len(data):,}, before {end:,}")
    return data
