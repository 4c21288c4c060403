"""Processing one chunk: read its bytes, parse, publish in one Kafka transaction, record."""

from __future__ import annotations

import gc
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .batches import ChunkRows
from .errors import ChunkChanged
from .ledger import COMMITTED, FAILED, Ledger
from .markers import COMMITS_PARTITION, COMMITS_TOPIC, CommitMarkers, marker_key
from .planning import ChunkPlan, resolve_inside
from .publisher import ChunkTransaction
from .records import Kind

log = logging.getLogger(__name__)
TransactionFactory = Callable[[str, int], ChunkTransaction]
ProgressHook = Callable[[int], None]


@dataclass
class Attempt:
    """One attempt at one chunk: what it knows before it starts, and how far it got."""

    job_id: str
    chunk: ChunkPlan
    after: int | None = None  # ordered jobs: the chunk that must have committed before this one publishes
    rerun: bool = True  # an earlier attempt may have committed: Kafka is asked before anything is sent
    marker_start: int = 0  # where this job's markers begin on the marker partition
    before_commit: Callable[[], None] | None = None  # a fault-injection point for tests (K2_TEST_*)
    give_up: str | None = None  # too many attempts ended unfinished: fail with this reason unless it committed
    commit_started: bool = False  # set just before the commit: from then on, only Kafka knows if it committed


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


def record_failed(ledger: Ledger, job_id: str, chunk: ChunkPlan, reason: str) -> dict[str, Any]:
    """Record the chunk failed (unless it has a result already) and return the result it has."""
    ledger.record_result(job_id, chunk.index, chunk_result(chunk, FAILED, {}, reason))
    return ledger.chunk_result(job_id, chunk.index) or chunk_result(chunk, FAILED, {}, reason)


def predecessor_failure(attempt: Attempt, ledger: Ledger, markers: CommitMarkers) -> str | None:
    """Why a chunk of an ordered job must not publish: the chunk before it did not commit (None if it did)."""
    after = attempt.after
    assert after is not None
    before = ledger.chunk_result(attempt.job_id, after)
    if before is not None and before["status"] == COMMITTED:
        return None
    if before is None and markers.find(marker_key(attempt.job_id, after), attempt.marker_start) is not None:
        return None  # committed in Kafka; only Redis did not hear of it
    reason = "it has no result" if before is None else f"it failed: {before.get('error')}"
    where = "" if before is None else f" ({before['path']})"
    return f"not loaded, to keep the key's order: chunk {after}{where} comes before it and {reason}"


def process_chunk(
    attempt: Attempt,
    data_root: Path,
    batch_rows: int,
    ledger: Ledger,
    markers: CommitMarkers,
    open_transaction: TransactionFactory,
    on_progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Load one chunk exactly once; safe to call again after any crash or retry.

    With `attempt.after` (ordered jobs), the chunk publishes only if that chunk committed, so a key's
    messages stay in file order; otherwise it records a failure naming that chunk.
    """
    job_id, chunk = attempt.job_id, attempt.chunk
    done = ledger.chunk_result(job_id, chunk.index)
    if done is not None:
        return done
    reason = None if attempt.after is None else predecessor_failure(attempt, ledger, markers)
    if reason is None:
        try:
            data = read_chunk(data_root, chunk)
        except ChunkChanged as exc:
            reason = str(exc)
    if reason is not None:
        return record_failed(ledger, job_id, chunk, reason)
    # Opening the transaction fences every earlier attempt of this chunk and ends its transaction: none can
    # commit from now on, so what Kafka holds now is final. A first attempt (no earlier start since Redis last
    # restarted) skips the question: nothing of it can be in Kafka.
    txn = open_transaction(job_id, chunk.index)
    key = marker_key(job_id, chunk.index)
    if attempt.rerun or attempt.give_up:
        marker = markers.find(key, attempt.marker_start)
        if marker is not None:
            log.info("chunk %s of job %s was committed by an earlier attempt", chunk.index, job_id)
            result = chunk_result(chunk, COMMITTED, marker)
            ledger.record_result(job_id, chunk.index, result)
            return result
    if attempt.give_up:
        return record_failed(ledger, job_id, chunk, attempt.give_up)
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
    txn.send(COMMITS_TOPIC, key, orjson.dumps(counts), [("job_id", job_id.encode())], COMMITS_PARTITION)
    attempt.commit_started = True
    if attempt.before_commit is not None:
        attempt.before_commit()
    txn.commit()
    result = chunk_result(chunk, COMMITTED, counts)
    ledger.record_result(job_id, chunk.index, result)
    return result
