"""s3:// input: the same layout as a directory, in an S3-compatible bucket, read with ranged GETs.

Credentials, endpoint and region come from the standard AWS settings (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, ~/.aws) through boto3, on the submitting host and on every worker.
Planning reads each object once, streamed in ranged GETs of GET_BLOCK bytes (it must count and checksum every
line to cut chunks on line boundaries and know how many rows a job holds); a worker reads only its chunk's range
(for gzip: from the seek point before it), each GET conditional on the ETag seen at submit.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO

from k2jobs.errors import ChunkChanged, InputError, StorageUnavailable
from k2jobs.plan.model import ChunkPlan, Kind
from k2jobs.sources.cutting import READ_BLOCK
from k2jobs.sources.gz import GzipDamaged, open_gzip, read_range
from k2jobs.sources.layout import COMPANY_INFO, DOCUMENTATION, input_stem, parse_company_symbols
from k2jobs.sources.planning import Input

SCHEME = "s3://"
GET_BLOCK = 8 << 20  # bytes per ranged GET when an object is read through
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
_clients: dict[int, Any] = {}
_lock = threading.Lock()


def is_object_url(source: str) -> bool:
    return source.startswith(SCHEME)


def split_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without a trailing slash) of s3://BUCKET[/PREFIX]."""
    bucket, _, prefix = url[len(SCHEME) :].partition("/")
    if not bucket:
        raise InputError(f"{url}: no bucket (expected s3://BUCKET/PREFIX)")
    return bucket, prefix.strip("/")


def client() -> Any:
    """This process's S3 client (one per process: never inherited over fork), from the standard AWS settings.

    An S3-compatible server named by AWS_ENDPOINT_URL is addressed by path (http://host:port/bucket/key). Short
    timeouts and few retries: an unreachable endpoint or a refused key ends a command within seconds.
    """
    pid = os.getpid()
    with _lock:
        if pid not in _clients:
            import boto3
            from botocore.config import Config

            custom = bool(os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"))
            config = Config(
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path" if custom else "auto"},
            )
            _clients.clear()
            _clients[pid] = boto3.session.Session().client("s3", config=config)
        return _clients[pid]


def storage_error(exc: Exception, what: str) -> Exception:
    """The k2jobs error for a failed S3 call: refused input (exit 2) or storage unavailable (exit 8)."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageUnavailable(f"{what}: no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _AUTH_CODES:
            return StorageUnavailable(f"{what}: authentication refused by the object store ({code})")
        if code in {"NoSuchBucket", "404", "NoSuchKey"}:
            return InputError(f"{what}: no such bucket or object ({code})")
        return StorageUnavailable(f"{what}: the object store answered {code}")
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or "AWS S3"
    return StorageUnavailable(f"{what}: the object store at {endpoint} did not answer ({type(exc).__name__})")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class RangedObject(io.RawIOBase):
    """A seekable, read-only view of one object, fetched in ranged GETs conditional on its ETag: what planning
    streams through and what indexed_gzip seeks in. ChunkChanged if the object was replaced or removed."""

    def __init__(self, bucket: str, info: ObjectInfo, block: int = GET_BLOCK) -> None:
        super().__init__()
        self.bucket, self.info, self.block = bucket, info, block
        self.pos = 0
        self._cache: tuple[int, bytes] = (0, b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.info.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.pos >= self.info.size or not len(view):
            return 0
        start, data = self._cache
        if not start <= self.pos < start + len(data):
            start, data = (
                self.pos,
                get_range(self.bucket, self.info, self.pos, min(self.info.size, self.pos + self.block)),
            )
            self._cache = (start, data)
        piece = data[self.pos - start : self.pos - start + len(view)]
        view[: len(piece)] = piece
        self.pos += len(piece)
        return len(piece)


def object_url(bucket: str, key: str) -> str:
    return f"{SCHEME}{bucket}/{key}"


def get_range(bucket: str, info: ObjectInfo, start: int, end: int) -> bytes:
    """Bytes [start, end) of the object as it was at submit (If-Match its ETag)."""
    from botocore.exceptions import BotoCoreError, ClientError

    url = object_url(bucket, info.key)
    try:
        answer = client().get_object(Bucket=bucket, Key=info.key, Range=f"bytes={start}-{end - 1}", IfMatch=info.etag)
        data: bytes = answer["Body"].read()
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"PreconditionFailed", "412"}:
            raise ChunkChanged(f"{url} was replaced after submit (its ETag is no longer {info.etag})") from exc
        if code in {"NoSuchKey", "404"}:
            raise ChunkChanged(f"{url} is gone: deleted after submit") from exc
        raise storage_error(exc, url) from exc
    except BotoCoreError as exc:
        raise storage_error(exc, url) from exc
    total = str(answer.get("ContentRange", "")).rpartition("/")[2]
    if total.isdigit() and int(total) != info.size:
        raise ChunkChanged(f"{url} changed after submit (size {info.size} -> {total})")
    if len(data) != end - start:
        raise ChunkChanged(f"{url}: {len(data)} bytes where {end - start} were asked for (bytes {start}-{end})")
    return data


def read_object_chunk(chunk: ChunkPlan, gzip_indexes: dict[str, bytes] | None) -> bytes:
    """A chunk's bytes from object storage: one ranged GET (plain), or from its gzip seek point (gzip)."""
    bucket, key = split_url(chunk.data_path)
    info = ObjectInfo(key, chunk.file_size, chunk.etag)
    if not chunk.compression:
        return get_range(bucket, info, chunk.start, chunk.end)
    raw = io.BufferedReader(RangedObject(bucket, info, block=1 << 20), buffer_size=1 << 20)
    try:
        with open_gzip(raw, (gzip_indexes or {}).get(chunk.data_path)) as reader:  # type: ignore[arg-type]
            return read_range(reader, chunk.start, chunk.end, chunk.path)
    except GzipDamaged as exc:
        raise ChunkChanged(f"{exc}: its chunk was not loaded") from exc


def list_objects(bucket: str, prefix: str) -> list[ObjectInfo]:
    """Every object under `prefix/`, by key."""
    from botocore.exceptions import BotoCoreError, ClientError

    found: list[ObjectInfo] = []
    url = object_url(bucket, prefix)
    try:
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
        for page in pages:
            found += [ObjectInfo(o["Key"], int(o["Size"]), str(o["ETag"])) for o in page.get("Contents", [])]
    except (ClientError, BotoCoreError) as exc:
        raise storage_error(exc, url) from exc
    return sorted(found, key=lambda o: o.key)


def input_objects(
    objects: list[ObjectInfo], prefix: str, url: str, skip_unknown: bool
) -> tuple[ObjectInfo, list[tuple[Kind, str, ObjectInfo]]]:
    """company_info.csv and the data objects (kind, path under the prefix, object), as find_input_files decides
    for a directory: anything unexpected is refused unless skipped."""
    kinds = {kind.value: kind for kind in Kind}
    start = len(prefix) + 1 if prefix else 0
    info, found = None, []
    for obj in objects:
        relative = obj.key[start:]
        parts = relative.split("/")
        if any(part.startswith(".") for part in parts) or relative.endswith("/"):
            continue
        if relative == COMPANY_INFO.as_posix():
            info = obj
        elif len(parts) == 2 and parts[0] in kinds and input_stem(parts[1]) is not None:
            found.append((kinds[parts[0]], relative, obj))
        elif len(parts) == 1 and DOCUMENTATION.match(relative):
            continue
        elif not skip_unknown and parts[0] != COMPANY_INFO.parts[0]:
            raise InputError(
                f"{url}/{relative} is an object k2jobs does not know how to load; expected trades/, quotes/ and "
                "reference-data/ (use --skip-unknown to skip it)"
            )
    if info is None:
        if not objects:
            raise InputError(f"{url}: no objects under this prefix (or the prefix is wrong)")
        raise InputError(f"{url}/{COMPANY_INFO.as_posix()} is missing: it maps each file's company id to a symbol")
    if not found:
        raise InputError(f"no CSV files (.csv or .csv.gz) found under {url}/trades or {url}/quotes")
    return info, found


class ObjectPrefix:
    """s3://BUCKET/PREFIX as planning sees it (a Source): listed once; company_info.csv read with one GET; each
    object streamed through the cutter in ranged GETs of GET_BLOCK bytes. Identities are the objects' URLs."""

    def __init__(self, url: str, skip_unknown: bool = False) -> None:
        self.bucket, self.prefix = split_url(url)
        self.name = self.source_dir = object_url(self.bucket, self.prefix).rstrip("/")
        self.skip_unknown = skip_unknown
        self._found: list[tuple[Kind, str, ObjectInfo]] = []

    def symbols(self) -> dict[int, str]:
        url = self.name
        info, self._found = input_objects(list_objects(self.bucket, self.prefix), self.prefix, url, self.skip_unknown)
        data = get_range(self.bucket, info, 0, info.size) if info.size else b""
        return parse_company_symbols(data, f"{url}/{COMPANY_INFO}")

    def inputs(self) -> list[Input]:
        bucket = self.bucket
        return [
            Input(kind, relative, object_url(bucket, obj.key), obj.size, obj.etag, obj)
            for kind, relative, obj in self._found
        ]

    def open(self, item: Input, compression: str) -> tuple[int, BinaryIO, int]:
        raw = io.BufferedReader(RangedObject(self.bucket, item.opened), buffer_size=GET_BLOCK)  # type: ignore[arg-type]
        return item.size, open_gzip(raw) if compression else raw, READ_BLOCK  # type: ignore[return-value]

    def open_raw(self, item: Input) -> BinaryIO:
        return io.BufferedReader(RangedObject(self.bucket, item.opened))  # type: ignore[arg-type, return-value]
