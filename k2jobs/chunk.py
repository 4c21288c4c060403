"""Processing one chunk: read its bytes, parse, publish in one Kafka transaction, record."""

from __future__ import annotations

import base64
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .errors import ChunkChanged
from .ledger import COMMITTED, FAILED, Ledger
from .planning import ChunkPlan, resolve_inside
from .publisher import COMMITS_TOPIC, ChunkTransaction, MarkerReader, Message, marker_key
from .records import Kind, RowError, RowParser, decode_line

log = logging.getLogger(__name__)
MAX_REASONS = 5  # rejection reasons kept per chunk for the report
TransactionFactory = Callable[[str, int], ChunkTransaction]
ProgressHook = Callable[[int], None]


def read_chunk(data_root: Path, chunk: ChunkPlan) -> bytes:
    """The chunk's bytes, refused if the file moved outside the root or changed since planning."""
    path = resolve_inside(data_root, data_root / chunk.data_path)
    try:
        stat = path.stat()
        with path.open("rb") as handle:
            handle.seek(chunk.start)
            data = handle.read(chunk.end - chunk.start)
    except OSError as exc:
        raise ChunkChanged(f"{chunk.path}: cannot be read any more ({exc.strerror})") from exc
    if stat.st_size != chunk.file_size or stat.st_mtime_ns != chunk.file_mtime_ns:
        raise ChunkChanged(
            f"{chunk.path} changed after submit (size {chunk.file_size} -> {stat.st_size}, "
            "or modification time): its chunk was not loaded"
        )
    if zlib.crc32(data) != chunk.crc32:
        raise ChunkChanged(f"{chunk.path} bytes {chunk.start}-{chunk.end} changed after submit (checksum)")
    return data


def dead_letter(error: str, chunk: ChunkPlan, line_no: int, raw: bytes) -> bytes:
    """The JSON value of a rejected row: reason, where it came from, and the original line."""
    value: dict[str, Any] = {"error": error, "file": chunk.path, "line": line_no, "kind": chunk.kind}
    try:
        value["raw"], value["raw_encoding"] = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        value["raw"], value["raw_encoding"] = base64.b64encode(raw).decode("ascii"), "base64"
    return orjson.dumps(value)


@dataclass
class ParsedChunk:
    """A chunk's rows, parsed: (topic, value, line number) each, and the counts."""

    rows: list[tuple[str, bytes, int]]
    key: bytes
    counts: dict[str, Any]


def parse_rows(data: bytes, chunk: ChunkPlan) -> ParsedChunk:
    """Every row of a chunk as a data or dead-letter message value; pure."""
    kind = Kind(chunk.kind)
    parser = RowParser(kind, chunk.symbol, chunk.company_id)
    parse_line, topic, dlq = parser.parse_line, kind.topic, kind.dlq_topic
    rows: list[tuple[str, bytes, int]] = []
    reasons: list[str] = []
    rejected = 0
    now_ms = int(time.time() * 1000)
    for line_no, line in enumerate(_lines(data), start=chunk.first_line):
        try:
            value = parse_line(line if isinstance(line, str) else decode_line(line), now_ms)
        except RowError as exc:
            raw: bytes = line.encode() if isinstance(line, str) else line
            rows.append((dlq, dead_letter(str(exc), chunk, line_no, raw.removesuffix(b"\r")), line_no))
            rejected += 1
            if len(reasons) < MAX_REASONS:
                reasons.append(f"line {line_no}: {exc}")
            continue
        if value is not None:
            rows.append((topic, value, line_no))
    counts = {"rows": chunk.rows, "published": len(rows) - rejected, "rejected": rejected, "reasons": reasons}
    return ParsedChunk(rows, parser.key, counts)


def _lines(data: bytes) -> Sequence[str | bytes]:
    """The chunk's lines (line endings but CR removed): decoded at once when the chunk is valid UTF-8."""
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return data.split(b"\n")  # some line is not UTF-8: decode line by line to reject just that one


def as_messages(rows: list[tuple[str, bytes, int]], key: bytes, chunk: ChunkPlan, job_id: str) -> Iterator[Message]:
    """Kafka messages for parsed rows, with their job_id and source headers."""
    job_header: tuple[str, str | bytes | None] = ("job_id", job_id.encode())
    prefix = f"{chunk.path}:"
    for topic, value, line_no in rows:
        yield topic, key, value, [job_header, ("source", f"{prefix}{line_no}".encode())]


def send_rows(
    txn: ChunkTransaction, parsed: ParsedChunk, chunk: ChunkPlan, job_id: str, batch_rows: int, progress: ProgressHook
) -> None:
    """Queue a chunk's messages in the open transaction, polling and reporting progress per batch.

    Consumes `parsed.rows`: each batch is dropped once Kafka's client holds a copy, so the values
    are not kept twice.
    """
    rows = parsed.rows
    total = len(rows)
    rows.reverse()  # take batches from the end: dropping them costs nothing
    for start in range(0, total, batch_rows):
        batch = rows[-batch_rows:]
        batch.reverse()
        del rows[-batch_rows:]
        txn.send_batch(as_messages(batch, parsed.key, chunk, job_id))
        progress(min(total, start + batch_rows))


class _Opening:
    """Opens a chunk's transaction on a thread: the broker round trips overlap with parsing."""

    def __init__(self, open_transaction: TransactionFactory, job_id: str, index: int) -> None:
        self._result: ChunkTransaction | BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(open_transaction, job_id, index), daemon=True)
        self._thread.start()

    def _run(self, open_transaction: TransactionFactory, job_id: str, index: int) -> None:
        try:
            self._result = open_transaction(job_id, index)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._result = exc

    def get(self) -> ChunkTransaction:
        self._thread.join()
        if isinstance(self._result, BaseException):
            raise self._result
        assert self._result is not None
        return self._result


def chunk_result(chunk: ChunkPlan, status: str, counts: dict[str, Any], error: str | None = None) -> dict[str, Any]:
    """The deterministic result of a chunk: the same value however often it runs."""
    return {
        "chunk": chunk.index,
        "path": chunk.path,
        "status": status,
        "rows": chunk.rows,
        "published": counts.get("published", 0),
        "rejected": counts.get("rejected", 0),
        "reasons": counts.get("reasons", []),
        "error": error,
    }


def process_chunk(
    job_id: str,
    chunk: ChunkPlan,
    data_root: Path,
    batch_rows: int,
    ledger: Ledger,
    markers: MarkerReader,
    open_transaction: TransactionFactory,
    on_progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Load one chunk exactly once; safe to call again after any crash or retry."""
    done = ledger.chunk_result(job_id, chunk.index)
    if done is not None:
        return done
    try:
        data = read_chunk(data_root, chunk)
    except ChunkChanged as exc:
        result = chunk_result(chunk, FAILED, {}, str(exc))
        ledger.record_result(job_id, chunk.index, result)
        return ledger.chunk_result(job_id, chunk.index) or result
    # Opening the transaction fences any earlier attempt, so after it the marker check is final.
    opening = _Opening(open_transaction, job_id, chunk.index)
    parsed = parse_rows(data, chunk)
    del data  # memory stays flat: a chunk's bytes, values and Kafka's queue are never all held at once
    counts = parsed.counts
    txn = opening.get()
    key = marker_key(job_id, chunk.index)
    earlier = ledger.marker_from(job_id, chunk.index)
    if earlier is not None:
        marker = markers.find(key, earlier)
        if marker is not None:
            log.info("chunk %s of job %s was committed by an earlier attempt", chunk.index, job_id)
            result = chunk_result(chunk, COMMITTED, marker)
            ledger.record_result(job_id, chunk.index, result)
            return result
    if counts["published"] + counts["rejected"] != chunk.rows:
        result = chunk_result(chunk, FAILED, counts, "row count differs from the plan")
        ledger.record_result(job_id, chunk.index, result)
        return result
    ledger.set_marker_from(job_id, chunk.index, markers.end_offset())
    ledger.set_progress(job_id, chunk.index, 0)
    txn.begin()

    def progress(rows_done: int) -> None:
        ledger.set_progress(job_id, chunk.index, rows_done)
        if on_progress is not None:
            on_progress(rows_done)

    send_rows(txn, parsed, chunk, job_id, batch_rows, progress)
    txn.send(COMMITS_TOPIC, key, orjson.dumps(counts), [("job_id", job_id.encode())])
    txn.commit()
    result = chunk_result(chunk, COMMITTED, counts)
    ledger.record_result(job_id, chunk.index, result)
    return result
