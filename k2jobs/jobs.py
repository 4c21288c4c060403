"""Submitting, resuming, watching and finishing jobs: the client side of a load."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from celery import chord

from .app import app
from .config import Settings
from .ledger import COMMITTED, Ledger
from .planning import JobPlan, plan_job
from .publisher import ensure_topics
from .reconcile import reconcile_job
from .registry import register_schemas

# If every chunk has a result but the chord callback has not reported after this long
# (celery #4207: a callback can be lost), the client reconciles the job itself.
CALLBACK_GRACE_S = 20.0


@dataclass(frozen=True)
class Progress:
    """Where a running job stands."""

    job_id: str
    status: str
    rows: int
    rows_done: int
    chunks: int
    chunks_done: int
    rejected: int
    elapsed_s: float


def new_job_id() -> str:
    """Sortable by time, unique by chance: 20261127-031502-9f3a1c."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def enqueue_chunks(job_id: str, plan: JobPlan, indexes: list[int]) -> None:
    """One chunk task per index as the header of a chord whose callback reconciles the job.

    Largest chunks first: workers take tasks in queue order, so the job ends on small chunks and no
    worker is left with a big one while the others sit idle.
    """
    ordered = sorted(indexes, key=lambda i: -plan.chunks[i].rows)
    header = [app.signature("k2jobs.process_chunk", args=(job_id, asdict(plan.chunks[i]))) for i in ordered]
    callback = app.signature("k2jobs.reconcile_job", args=(job_id,), immutable=False)
    chord(header)(callback)
    _forget_pending_results()


def _forget_pending_results() -> None:
    """Detach the chord's AsyncResults: the client never waits on them.

    Left alone, the Redis backend keeps them pending and their __del__ unsubscribes from Redis at
    interpreter exit, which prints a traceback after the report.
    """
    for mapping in getattr(app.backend, "_pending_results", ()):
        for waiters in mapping.values():
            for pending in list(waiters.values()):
                pending.backend = None
        mapping.clear()


def with_value_format(plan: JobPlan, value_format: str, schema_ids: dict[str, int]) -> JobPlan:
    """The plan with every chunk told how to write its values (and, for Avro, its kind's schema id)."""
    chunks = [replace(c, value_format=value_format, schema_id=schema_ids.get(c.kind, 0)) for c in plan.chunks]
    return replace(plan, chunks=chunks)


def submit_job(
    settings: Settings,
    ledger: Ledger,
    directory: Path,
    chunk_rows: int,
    skip_unknown: bool = False,
    value_format: str | None = None,
) -> tuple[str, JobPlan]:
    """Plan, check the services, record and enqueue a job; nothing is enqueued on any error."""
    started = time.perf_counter()
    value_format = value_format or settings.value_format
    plan = plan_job(settings.data_root, directory, chunk_rows, skip_unknown)
    planned = time.perf_counter()
    ledger.ping()
    ensure_topics(settings)  # also the reachability check: it fails within seconds if Kafka is away
    schema_ids = register_schemas(settings) if value_format == "avro" else {}
    plan = with_value_format(plan, value_format, schema_ids)
    job_id = new_job_id()
    options = {"chunk_rows": chunk_rows, "batch_rows": settings.batch_rows, "format": value_format}
    ledger.create_job(job_id, plan, {**options, "schema_ids": schema_ids})
    enqueue_chunks(job_id, plan, list(range(len(plan.chunks))))
    ledger.set_submit_timings(job_id, plan_s=planned - started, enqueue_s=time.perf_counter() - planned)
    return job_id, plan


def resume_job(ledger: Ledger, job_id: str) -> list[int]:
    """Re-enqueue the chunks of a job that are not committed; committed ones never run again."""
    plan = ledger.plan(job_id)
    results = ledger.results(job_id)
    pending = [c.index for c in plan.chunks if results.get(c.index, {}).get("status") != COMMITTED]
    ledger.clear_failures(job_id, pending)
    ledger.clear_report(job_id)
    ledger.set_status(job_id, "running")
    if pending:
        enqueue_chunks(job_id, plan, pending)
    else:
        finish_job(ledger, job_id)
    return pending


def finish_job(ledger: Ledger, job_id: str) -> dict[str, Any]:
    """Reconcile a job from its plan and chunk results, and store the report."""
    created = float(ledger.job_meta(job_id)["created"])
    report = reconcile_job(job_id, ledger.plan(job_id), ledger.results(job_id), time.time() - created)
    ledger.save_report(job_id, report)
    return report


def job_progress(ledger: Ledger, job_id: str) -> Progress:
    """Rows and chunks done so far, from the workers' per-batch progress in Redis."""
    meta = ledger.job_meta(job_id)
    results = ledger.results(job_id)
    report = ledger.report(job_id)
    return Progress(
        job_id=job_id,
        status=report["status"] if report else meta["status"],
        rows=int(meta["rows"]),
        rows_done=min(int(meta["rows"]), ledger.progress(job_id)),
        chunks=int(meta["chunks"]),
        chunks_done=len(results),
        rejected=sum(r.get("rejected", 0) for r in results.values()),
        elapsed_s=time.time() - float(meta["created"]),
    )


def wait_for_report(
    ledger: Ledger, job_id: str, on_progress: Callable[[Progress], None] | None = None, interval_s: float = 0.5
) -> dict[str, Any]:
    """Block until the job's report exists, reconciling it here if the callback was lost."""
    all_done_since: float | None = None
    while True:
        report = ledger.report(job_id)
        progress = job_progress(ledger, job_id)
        if on_progress is not None:
            on_progress(progress)  # once more at the end, so the display ends on the final numbers
        if report is not None:
            return report
        if progress.chunks_done >= progress.chunks:
            all_done_since = all_done_since or time.monotonic()
            if time.monotonic() - all_done_since > CALLBACK_GRACE_S:
                return finish_job(ledger, job_id)
        else:
            all_done_since = None
        ledger.wait_for_report_signal(job_id, interval_s)
