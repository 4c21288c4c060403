"""The source a name means (s3://BUCKET/PREFIX, or a path under the data root): the one place that tells them
apart, to plan a job and to read a chunk's bytes back."""

from __future__ import annotations

import zlib
from pathlib import Path

from k2jobs.errors import ChunkChanged
from k2jobs.plan.model import ChunkPlan
from k2jobs.sources.layout import InsideRoot
from k2jobs.sources.local import LocalDirectory, read_local_chunk
from k2jobs.sources.planning import Source
from k2jobs.sources.s3 import ObjectPrefix, is_object_url, read_object_chunk


def source_for(data_root: Path, where: Path | str, skip_unknown: bool = False) -> Source:
    """The source `where` names: an S3 prefix (a str starting s3://), or a directory under `data_root`."""
    if isinstance(where, str) and is_object_url(where):
        return ObjectPrefix(where, skip_unknown)
    return LocalDirectory(data_root, Path(where), skip_unknown)


def read_chunk(
    data_root: Path, chunk: ChunkPlan, inside: InsideRoot | None = None, gzip_indexes: dict[str, bytes] | None = None
) -> bytes:
    """The chunk's bytes (decompressed, for a .csv.gz file: from the point its gzip index names), refused if the
    file moved outside the root, or its size or the chunk's checksum changed, or its gzip data is damaged."""
    if is_object_url(chunk.data_path):
        return checked(chunk, read_object_chunk(chunk, gzip_indexes))  # size, ETag and damage checked there
    path = (inside or InsideRoot(data_root))(data_root / chunk.data_path)
    return checked(chunk, read_local_chunk(path, chunk, gzip_indexes))


def checked(chunk: ChunkPlan, data: bytes) -> bytes:
    """`data`, refused unless it is the chunk's bytes as planned (their CRC-32)."""
    if zlib.crc32(data) != chunk.crc32:
        raise ChunkChanged(f"{chunk.path} bytes {chunk.start}-{chunk.end} changed after submit (checksum)")
    return data
