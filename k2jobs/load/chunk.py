"""Processing one chunk: read its bytes, parse, publish in one Kafka transaction, record."""

from __future__ import annotations

import functools
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from k2jobs.config import Settings
from k2jobs.errors import ChunkChanged
from k2jobs.kafka.markers import COMMITS_PARTITION, COMMITS_TOPIC, marker_key
from k2jobs.load.ports import ChunkLedger, ChunkProducer, CommitLookup, ProgressSink, ResultReader
from k2jobs.load.results import chunk_result, committed_results, fail_all, task_result
from k2jobs.plan.model import ChunkPlan, Kind
from k2jobs.plan.status import ChunkStatus
from k2jobs.rows.batches import ChunkRows
from k2jobs.sources.choose import read_chunk
from k2jobs.sources.layout import InsideRoot

log = logging.getLogger(__name__)
TransactionFactory = Callable[[str, int], ChunkProducer]
ProgressHook = Callable[[int], None]


@dataclass
class Attempt:
    """One attempt at one chunk: what it knows before it starts, and how far it got."""

    job_id: str
    chunk: ChunkPlan  # the task's first chunk, which names the task
    after: int | None = None  # ordered jobs: the task (its first chunk) that must have committed before this one
    rerun: bool = True  # an earlier attempt may have committed: Kafka is asked before anything is sent
    marker_start: int = 0  # where this job's markers begin on the marker partition
    before_commit: Callable[[], None] | None = None  # fault-injection points for tests (K2_TEST_*)
    after_commit: Callable[[], None] | None = None
    give_up: str | None = None  # too many attempts ended unfinished: fail with this reason unless it committed
    commit_started: bool = False  # set just before the commit: from then on, only Kafka knows if it committed
    task_chunks: list[ChunkPlan] | None = None  # every chunk of a task of several (plan.grouping), in publish order
    after_chunks: list[int] | None = None  # every chunk of the task `after`
    gzip_indexes: dict[str, bytes] | None = None  # the job's gzip indexes (JobPlan.gzip_indexes)
    progress_every_s: float = Settings.progress_every_s  # K2_PROGRESS_EVERY_S

    @property
    def chunks(self) -> list[ChunkPlan]:
        return self.task_chunks or [self.chunk]


def send_rows(txn: ChunkProducer, rows: ChunkRows, batch_lines: int, progress: ProgressHook) -> None:
    """Parse and queue a chunk's messages batch by batch in the open transaction, reporting progress.

    Only one batch of values exists at a time: memory stays flat however large the chunk.
    """
    kind = Kind(rows.chunk.kind)
    # The loop makes two short-lived containers per row (headers) and no reference cycles: reference
    # counting frees everything, and the cyclic collector would only rescan them (~10% of a worker's time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        # A producer that can, parses and queues the common rows in C (ChunkProducer.queue_rows).
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


def predecessor_failure(attempt: Attempt, ledger: ResultReader, markers: CommitLookup) -> str | None:
    """Why a task of an ordered job must not publish: the task before it in its key did not commit (None if it
    did). A task commits all its chunks or none of them."""
    after = attempt.after
    assert after is not None
    before = ledger.chunk_results(attempt.job_id, attempt.after_chunks or [after])
    failed = next((r for r in before if r is not None and r["status"] != ChunkStatus.COMMITTED), None)
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
        self, ledger: ProgressSink, job_id: str, hook: ProgressHook | None, every_s: float = Settings.progress_every_s
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


def read_task_chunks(
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


def process_chunk(
    attempt: Attempt,
    data_root: Path,
    batch_rows: int,
    ledger: ChunkLedger,
    markers: CommitLookup,
    open_transaction: TransactionFactory,
    on_progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Load one chunk (or a task of several small files' chunks) exactly once; safe to call again after any crash
    or retry. A task publishes in one transaction, under one commit marker.

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
    if any(c.damaged for c in chunks):  # planned alone (group_into_tasks): never sent anything, nothing to ask Kafka
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
    data, failed = read_task_chunks(data_root, chunks, attempt.gzip_indexes)
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
        results = [chunk_result(c, ChunkStatus.FAILED, counts[c.index], why) for c in chunks]
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
