"""Processing one chunk: read its bytes, parse, publish in one Kafka transaction, record."""

from __future__ import annotations

import gc
import logging
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .batches import ChunkRows
from .errors import ChunkChanged
from .ledger import COMMITTED, FAILED, Ledger
from .planning import ChunkPlan, resolve_inside
from .publisher import COMMITS_TOPIC, ChunkTransaction, MarkerReader, job_started_ms, marker_key
from .records import Kind

log = logging.getLogger(__name__)
TransactionFactory = Callable[[str, int], ChunkTransaction]
ProgressHook = Callable[[int], None]


def read_chunk(data_root: Path, chunk: ChunkPlan) -> bytes:
    """The chunk's bytes, refused if the file moved outside the root or its size or chunk checksum changed."""
    path = resolve_inside(data_root, data_root / chunk.data_path)
    try:
        stat = path.stat()
        with path.open("rb") as handle:
            handle.seek(chunk.start)
            data = handle.read(chunk.end - chunk.start)
    except OSError as exc:
        raise ChunkChanged(f"{chunk.path}: cannot be read any more ({exc.strerror})") from exc
    # Content, not modification time: a copy of the data (another mount, rsync) has other times, same bytes.
    if stat.st_size != chunk.file_size:
        raise ChunkChanged(
            f"{chunk.path} changed after submit (size {chunk.file_size} -> {stat.st_size}): its chunk was not loaded"
        )
    if zlib.crc32(data) != chunk.crc32:
        raise ChunkChanged(f"{chunk.path} bytes {chunk.start}-{chunk.end} changed after submit (checksum)")
    return data


def send_rows(txn: ChunkTransaction, rows: ChunkRows, batch_lines: int, progress: ProgressHook) -> None:
    """Parse and queue a chunk's messages batch by batch in the open transaction, reporting progress.

    Only one batch of values exists at a time: memory stays flat however large the chunk.
    """
    kind = Kind(rows.chunk.kind)
    # The loop makes two short-lived containers per row (headers) and no reference cycles: reference
    # counting frees everything, and the cyclic collector would only rescan them (~10% of a worker's time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        for batch in rows.batches(batch_lines):
            txn.send_batch(kind.topic, rows.key, batch.values, batch.headers)
            if batch.dead:
                txn.send_batch(kind.dlq_topic, rows.key, batch.dead, batch.dead_headers)
            progress(rows.published + rows.rejected)
    finally:
        if collecting:
            gc.enable()


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


def predecessor_failure(job_id: str, after: int, ledger: Ledger, markers: MarkerReader) -> str | None:
    """Why a chunk of an ordered job must not publish: the chunk before it did not commit (None if it did)."""
    before = ledger.chunk_result(job_id, after)
    if before is not None and before["status"] == COMMITTED:
        return None
    if before is None and markers.find(marker_key(job_id, after), job_started_ms(job_id)) is not None:
        return None  # committed in Kafka; only Redis did not hear of it
    reason = "it has no result" if before is None else f"it failed: {before.get('error')}"
    where = "" if before is None else f" ({before['path']})"
    return f"not loaded, to keep the key's order: chunk {after}{where} comes before it and {reason}"


def process_chunk(
    job_id: str,
    chunk: ChunkPlan,
    data_root: Path,
    batch_rows: int,
    ledger: Ledger,
    markers: MarkerReader,
    open_transaction: TransactionFactory,
    on_progress: ProgressHook | None = None,
    after: int | None = None,
) -> dict[str, Any]:
    """Load one chunk exactly once; safe to call again after any crash or retry.

    With `after` (ordered jobs), the chunk publishes only if chunk `after` committed, so a key's messages
    stay in file order; otherwise it records a failure naming that chunk.
    """
    done = ledger.chunk_result(job_id, chunk.index)
    if done is not None:
        return done
    reason = None if after is None else predecessor_failure(job_id, after, ledger, markers)
    if reason is None:
        try:
            data = read_chunk(data_root, chunk)
        except ChunkChanged as exc:
            reason = str(exc)
    if reason is not None:
        ledger.record_result(job_id, chunk.index, chunk_result(chunk, FAILED, {}, reason))
        return ledger.chunk_result(job_id, chunk.index) or chunk_result(chunk, FAILED, {}, reason)
    # Opening the transaction fences any earlier attempt, so after it the marker check is final. The check
    # reads Kafka from the job's start, so it holds even if Redis lost what an earlier attempt wrote.
    txn = open_transaction(job_id, chunk.index)
    key = marker_key(job_id, chunk.index)
    marker = markers.find(key, job_started_ms(job_id))
    if marker is not None:
        log.info("chunk %s of job %s was committed by an earlier attempt", chunk.index, job_id)
        result = chunk_result(chunk, COMMITTED, marker)
        ledger.record_result(job_id, chunk.index, result)
        return result
    ledger.set_progress(job_id, chunk.index, 0)
    txn.begin()

    def progress(rows_done: int) -> None:
        ledger.set_progress(job_id, chunk.index, rows_done)
        if on_progress is not None:
            on_progress(rows_done)

    rows = ChunkRows(data, chunk, job_id)
    try:
        send_rows(txn, rows, batch_rows, progress)
    except BaseException:
        txn.abort()  # at once: an open transaction holds back every read_committed consumer of its partitions
        raise
    counts = rows.counts()
    if counts["published"] + counts["rejected"] != chunk.rows:
        txn.abort()  # nothing of this chunk becomes visible
        result = chunk_result(chunk, FAILED, counts, "row count differs from the plan")
        ledger.record_result(job_id, chunk.index, result)
        return result
    txn.send(COMMITS_TOPIC, key, orjson.dumps(counts), [("job_id", job_id.encode())])
    txn.commit()
    result = chunk_result(chunk, COMMITTED, counts)
    ledger.record_result(job_id, chunk.index, result)
    return result
