"""Thin Celery tasks: build dependencies, call one function, return a small JSON-able dict."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from redis import RedisError

from .app import app, worker_clients
from .chunk import chunk_result, process_chunk
from .errors import PublishError, UnsafePathError
from .jobs import finish_job
from .ledger import FAILED
from .planning import ChunkPlan, resolve_inside
from .publisher import ChunkFenced, ChunkTransaction

log = logging.getLogger(__name__)
MAX_RETRIES = 30
MAX_BACKOFF_S = 30
PROGRESS = "PROGRESS"
PROGRESS_EVERY_S = 0.5


class FlowerProgress:
    """Shows a running chunk's rows in Flower: a PROGRESS state and a task-progress event, at most every 0.5 s."""

    def __init__(self, task: Task, job_id: str, plan: ChunkPlan) -> None:
        self.task, self.job_id, self.plan = task, job_id, plan
        self.last = 0.0

    def __call__(self, rows_done: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S or self.task.request.id is None:
            return
        self.last = now
        meta = {
            "job_id": self.job_id,
            "chunk": self.plan.index,
            "path": self.plan.path,
            "rows_done": rows_done,
            "rows": self.plan.rows,
        }
        self.task.update_state(state=PROGRESS, meta=meta)
        self.task.send_event("task-progress", **meta)


@app.task(name="k2jobs.process_chunk", bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES)
def process_chunk_task(self: Task, job_id: str, chunk: dict[str, Any]) -> dict[str, Any]:
    """Load one chunk of a job into Kafka, exactly once."""
    clients = worker_clients()
    plan = ChunkPlan.from_dict(chunk)
    started = time.monotonic()
    try:
        resolve_inside(clients.settings.data_root, clients.settings.data_root / plan.data_path)
        result = process_chunk(
            job_id,
            plan,
            clients.settings.data_root,
            clients.settings.batch_rows,
            clients.ledger,
            clients.markers,
            lambda job, index: ChunkTransaction(clients.settings, job, index),
            FlowerProgress(self, job_id, plan),
        )
    except UnsafePathError as exc:
        result = chunk_result(plan, FAILED, {}, str(exc))
        clients.ledger.record_result(job_id, plan.index, result)
    except ChunkFenced:
        log.warning("chunk %s of job %s is being loaded by a newer attempt", plan.index, job_id)
        raise Ignore() from None
    except (PublishError, RedisError) as exc:
        # Transient: Kafka or Redis away. Retrying keeps the chord waiting for this chunk rather
        # than failing it; the transaction and the marker check make the retry safe.
        if self.request.retries >= MAX_RETRIES:
            result = chunk_result(plan, FAILED, {}, f"gave up after {MAX_RETRIES} retries: {exc}")
            clients.ledger.record_result(job_id, plan.index, result)
            return result
        log.warning("chunk %s of job %s will be retried: %s", plan.index, job_id, exc)
        raise self.retry(exc=exc, countdown=min(MAX_BACKOFF_S, 2**self.request.retries)) from None
    log.info(
        "chunk done job_id=%s chunk=%s file=%s rows=%s published=%s rejected=%s status=%s duration_s=%.3f",
        job_id,
        plan.index,
        plan.path,
        plan.rows,
        result["published"],
        result["rejected"],
        result["status"],
        time.monotonic() - started,
    )
    return result


@app.task(name="k2jobs.reconcile_job", acks_late=True)
def reconcile_job_task(_header_results: list[Any], job_id: str) -> dict[str, Any]:
    """Chord callback: reconcile the job from Redis (not from the header results) and save the report."""
    ledger = worker_clients().ledger
    report = finish_job(ledger, job_id)
    return {"job_id": job_id, "status": report["status"], "totals": report["totals"]}
