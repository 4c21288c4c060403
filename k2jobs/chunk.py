"""Processing one chunk: read its bytes, parse, publish in one Kafka transaction, record."""

from __future__ import annotations

import functools
import gc
import logging
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .batches import ChunkRows
from .errors import ChunkChanged
from .gz import GzipDamaged, open_gzip, read_range
from .ledger import COMMITTED, FAILED, Ledger
from .markers import COMMITS_PARTITION, COMMITS_TOPIC, CommitMarkers, marker_key
from .objects import is_object_url, read_object_chunk
from .planning import ChunkPlan, InsideRoot
from .publisher import ChunkTransaction
from .records import Kind

log = logging.getLogger(__name__)
TransactionFactory = Callable[[str, int], ChunkTransaction]
ProgressHook = Callable[[int], None]
PROGRESS_EVERY_S = 0.1  # how often a running chunk's progress is written to Redis


@dataclass
class Attempt:
    """One attempt at one chunk: what it knows before it starts, and how far it got."""

    job_id: str
    chunk: ChunkPlan  # the task's chunk: the first of a bundle
    after: int | None = None  # ordered jobs: the task (its first chunk) that must have committed before this one
    rerun: bool = True  # an earlier attempt may have committed: Kafka is asked before anything is sent
    marker_start: int = 0  # where this job's markers begin on the marker partition
    before_commit: Callable[[], None] | None = None  # fault-injection points for tests (K2_TEST_*)
    after_commit: Callable[[], None] | None = None
    give_up: str | None = None  # too many attempts ended unfinished: fail with this reason unless it committed
    commit_started: bool = False  # set just before the commit: from then on, only Kafka knows if it committed
    members: list[ChunkPlan] | None = None  # a bundle's chunks (see planning.bundle_chunks), in publish order
    after_chunks: list[int] | None = None  # every chunk of the task `after`
    gzip_indexes: dict[str, bytes] | None = None  # the job's gzip indexes (JobPlan.gzip_indexes)
    progress_every_s: float = PROGRESS_EVERY_S  # K2_PROGRESS_EVERY_S

    @property
    def chunks(self) -> list[ChunkPlan]:
        return self.members or [self.chunk]


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
        # A producer that can, parses and queues the common rows in C (ChunkTransaction.queue_rows).
        queue = functools.partial(txn.queue_rows, kind.topic) if txn.compiled else None
        for batch in rows.batches(batch_lines, queue):
            if batch.values:  # compiled, a batch holds only what Python parsed: most hold nothing
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


def task_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """What the task of one chunk, or of a bundle of chunks, returns: the chunk's result, or the bundle's sums."""
    if len(results) == 1:
        return results[0]
    failed = [r for r in results if r["status"] != COMMITTED]
    return {
        "chunk": results[0]["chunk"],
        "path": f"{len(results)} chunks of {len({r['path'] for r in results})} files",
        "status": FAILED if failed else COMMITTED,
        "rows": sum(r["rows"] for r in results),
        "published": sum(r["published"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
        "reasons": [reason for r in results for reason in r.get("reasons", [])][:5],
        "error": "; ".join(f"{r['path']}: {r['error']}" for r in failed[:3]) or None,
    }


def fail_all(ledger: Ledger, job_id: str, chunks: list[ChunkPlan], reason: str | dict[int, str]) -> dict[str, Any]:
    """Record the task's chunks failed (a chunk with a result keeps it), in one round trip each way; the
    task's result from what they have now. `reason`: one for all, or one per chunk index."""
    why = reason if isinstance(reason, dict) else {c.index: reason for c in chunks}
    ledger.record_results(job_id, [chunk_result(c, FAILED, {}, why[c.index]) for c in chunks])
    stored = ledger.chunk_results(job_id, [c.index for c in chunks])
    return task_result([r or chunk_result(c, FAILED, {}, why[c.index]) for c, r in zip(chunks, stored, strict=True)])


def predecessor_failure(attempt: Attempt, ledger: Ledger, markers: CommitMarkers) -> str | None:
    """Why a task of an ordered job must not publish: the task before it in its key did not commit (None if it
    did). A task commits all its chunks or none of them."""
    after = attempt.after
    assert after is not None
    before = ledger.chunk_results(attempt.job_id, attempt.after_chunks or [after])
    failed = next((r for r in before if r is not None and r["status"] != COMMITTED), None)
    if failed is None and all(r is not None for r in before):
        return None
    if failed is None and markers.find(marker_key(attempt.job_id, after), attempt.marker_start) is not None:
        return None  # committed in Kafka; only Redis did not hear of it
    if failed is None:
        return f"not loaded, to keep the key's order: chunk {after} comes before it and it has no result"
    return (
        f"not loaded, to keep the key's order: chunk {failed['chunk']} ({failed['path']}) comes before it "
        f"and it failed: {failed.get('error')}"
    )


class ProgressWriter:
    """Writes the running chunk's rows handled to Redis at most every `every_s` (and tells the hook)."""

    def __init__(
        self, ledger: Ledger, job_id: str, hook: ProgressHook | None, every_s: float = PROGRESS_EVERY_S
    ) -> None:
        self.ledger, self.job_id, self.hook, self.every_s = ledger, job_id, hook, every_s
        self.chunk = -1
        self.last = 0.0

    def __call__(self, rows_done: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.ledger.set_progress(self.job_id, self.chunk, rows_done)
        if self.hook is not None:
            self.hook(rows_done)


def read_members(
    data_root: Path, chunks: list[ChunkPlan], gzip_indexes: dict[str, bytes] | None = None
) -> tuple[list[bytes], dict[int, str]]:
    """Every chunk's bytes; or, if a file changed, why each chunk of the task is not loaded (all or none)."""
    data: list[bytes] = []
    inside = InsideRoot(data_root)
    for chunk in chunks:
        try:
            data.append(read_chunk(data_root, chunk, inside, gzip_indexes))
        except ChunkChanged as exc:
            others = f"not loaded: chunk {chunk.index} ({chunk.path}), in the same transaction, changed after submit"
            return [], {c.index: str(exc) if c is chunk else others for c in chunks}
    return data, {}


def committed_results(chunks: list[ChunkPlan], marker: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks' results from the counts their commit marker holds (one chunk's counts, or a bundle's)."""
    if "chunks" not in marker:
        return [chunk_result(chunks[0], COMMITTED, marker)]
    return [chunk_result(c, COMMITTED, marker["chunks"][str(c.index)]) for c in chunks]


def process_chunk(
    attempt: Attempt,
    data_root: Path,
    batch_rows: int,
    ledger: Ledger,
    markers: CommitMarkers,
    open_transaction: TransactionFactory,
    on_progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Load one chunk (or a bundle of small files' chunks) exactly once; safe to call again after any crash
    or retry. A bundle publishes in one transaction, under one commit marker.

    With `attempt.after` (ordered jobs), the chunk publishes only if that chunk committed, so a key's
    messages stay in file order; otherwise it records a failure naming that chunk.
    """
    job_id, chunks = attempt.job_id, attempt.chunks
    done = ledger.chunk_results(job_id, [c.index for c in chunks])
    if all(r is not None for r in done):
        return task_result(done)  # type: ignore[arg-type]
    reason = None if attempt.after is None else predecessor_failure(attempt, ledger, markers)
    if reason is not None:
        return fail_all(ledger, job_id, chunks, reason)
    if any(c.damaged for c in chunks):  # planned alone (bundle_chunks): never sent anything, nothing to ask Kafka
        return fail_all(ledger, job_id, chunks, {c.index: c.damaged or "not loaded: a damaged file" for c in chunks})
    # Opening the transaction fences every earlier attempt of this task and ends its transaction: none can
    # commit from now on, so what Kafka holds now is final. A first attempt (no earlier start since Redis last
    # restarted) skips the question: nothing of it can be in Kafka. Kafka is asked before the files are read:
    # a file changed after its chunk committed does not make that chunk failed.
    txn = open_transaction(job_id, attempt.chunk.index)
    key = marker_key(job_id, attempt.chunk.index)
    if attempt.rerun or attempt.give_up:
        marker = markers.find(key, attempt.marker_start)
        if marker is not None:
            log.info("chunk %s of job %s was committed by an earlier attempt", attempt.chunk.index, job_id)
            results = committed_results(chunks, marker)
            ledger.record_results(job_id, results)
            return task_result(results)
    if attempt.give_up:
        return fail_all(ledger, job_id, chunks, attempt.give_up)
    data, failed = read_members(data_root, chunks, attempt.gzip_indexes)
    if failed:
        return fail_all(ledger, job_id, chunks, failed)
    txn.begin()
    counts: dict[int, dict[str, Any]] = {}
    progress = ProgressWriter(ledger, job_id, on_progress, attempt.progress_every_s)
    try:
        for chunk, chunk_data in zip(chunks, data, strict=True):
            progress.chunk = chunk.index
            rows = ChunkRows(chunk_data, chunk, job_id)
            send_rows(txn, rows, batch_rows, progress)
            counts[chunk.index] = rows.counts()
    except BaseException:
        txn.abort()  # at once: an open transaction holds back every read_committed consumer of its partitions
        raise
    del data
    wrong = [c.path for c in chunks if counts[c.index]["published"] + counts[c.index]["rejected"] != c.rows]
    if wrong:
        txn.abort()  # nothing of this task becomes visible
        why = f"row count differs from the plan ({', '.join(wrong[:3])})"
        results = [chunk_result(c, FAILED, counts[c.index], why) for c in chunks]
        ledger.record_results(job_id, results)
        return task_result(results)
    value = counts[chunks[0].index] if len(chunks) == 1 else {"chunks": {str(i): n for i, n in counts.items()}}
    txn.send(COMMITS_TOPIC, key, orjson.dumps(value), [("job_id", job_id.encode())], COMMITS_PARTITION)
    attempt.commit_started = True
    if attempt.before_commit is not None:
        attempt.before_commit()
    txn.commit()
    if attempt.after_commit is not None:
        attempt.after_commit()
    results = committed_results(chunks, value)
    ledger.record_results(job_id, results)
    return task_result(results)
