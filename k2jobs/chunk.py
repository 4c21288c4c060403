"""Processing one chunk: read its bytes, parse, publish in one Kafka transaction, record."""

from __future__ import annotations

import base64
import logging
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .errors import ChunkChanged
from .ledger import COMMITTED, FAILED, Ledger
from .planning import ChunkPlan, resolve_inside
from .publisher import COMMITS_TOPIC, ChunkTransaction, MarkerReader, marker_key
from .records import Kind, RowError, RowParser

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


def publish_rows(
    data: bytes, chunk: ChunkPlan, job_id: str, txn: ChunkTransaction, batch_rows: int,
    progress: ProgressHook,
) -> dict[str, Any]:
    """Parse and send every row of a chunk inside the open transaction; return the counts."""
    kind = Kind(chunk.kind)
    parser = RowParser(kind, chunk.symbol, chunk.company_id)
    topic, dlq, key = kind.topic, kind.dlq_topic, parser.key
    job_header = ("job_id", job_id.encode())
    prefix = f"{chunk.path}:"
    published = rejected = in_batch = 0
    reasons: list[str] = []
    now_ms = int(time.time() * 1000)
    line_no = chunk.first_line - 1
    for line in data.split(b"\n"):
        line_no += 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            continue
        headers = [job_header, ("source", f"{prefix}{line_no}".encode())]
        try:
            txn.send(topic, key, parser.parse(line, now_ms), headers)
            published += 1
        except RowError as exc:
            txn.send(dlq, key, dead_letter(str(exc), chunk, line_no, line), headers)
            rejected += 1
            if len(reasons) < MAX_REASONS:
                reasons.append(f"line {line_no}: {exc}")
        in_batch += 1
        if in_batch >= batch_rows:
            txn.poll()
            progress(published + rejected)
            now_ms, in_batch = int(time.time() * 1000), 0
    return {"rows": chunk.rows, "published": published, "rejected": rejected, "reasons": reasons}


def chunk_result(chunk: ChunkPlan, status: str, counts: dict[str, Any], error: str | None = None) -> dict[str, Any]:
    """The deterministic result of a chunk: the same value however often it runs."""
    return {
        "chunk": chunk.index, "path": chunk.path, "status": status, "rows": chunk.rows,
        "published": counts.get("published", 0), "rejected": counts.get("rejected", 0),
        "reasons": counts.get("reasons", []), "error": error,
    }


def process_chunk(
    job_id: str, chunk: ChunkPlan, data_root: Path, batch_rows: int, ledger: Ledger,
    markers: MarkerReader, open_transaction: TransactionFactory,
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
    txn = open_transaction(job_id, chunk.index)
    key = marker_key(job_id, chunk.index)
    earlier = ledger.marker_from(job_id, chunk.index)
    if earlier is not None:
        marker = markers.find(key, earlier)
        if marker is not None:
            log.info("chunk already committed by an earlier attempt", extra={"job_id": job_id, "chunk": chunk.index})
            result = chunk_result(chunk, COMMITTED, marker)
            ledger.record_result(job_id, chunk.index, result)
            return result
    ledger.set_marker_from(job_id, chunk.index, markers.end_offset())
    ledger.set_progress(job_id, chunk.index, 0)
    txn.begin()
    counts = publish_rows(
        data, chunk, job_id, txn, batch_rows, lambda n: ledger.set_progress(job_id, chunk.index, n)
    )
    if counts["published"] + counts["rejected"] != chunk.rows:
        txn.abort()
        result = chunk_result(chunk, FAILED, counts, "row count differs from the plan")
        ledger.record_result(job_id, chunk.index, result)
        return result
    txn.send(COMMITS_TOPIC, key, orjson.dumps(counts), [("job_id", job_id.encode())])
    txn.commit()
    result = chunk_result(chunk, COMMITTED, counts)
    ledger.record_result(job_id, chunk.index, result)
    return result
