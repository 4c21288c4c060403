"""Thin Celery tasks: build dependencies, call one function, return a small JSON-able dict."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from redis import RedisError

from .app import app, worker_clients
from .chunk import chunk_result, process_chunk
from .errors import PublishError, UnsafePathError
from .jobs import finish_job_if_done
from .ledger import FAILED
from .planning import ChunkPlan, resolve_inside
from .publisher import ChunkFenced, ChunkTransaction

log = logging.getLogger(__name__)
PROGRESS = "PROGRESS"
PROGRESS_EVERY_S = 0.5
_VISIBILITY_S = int(app.conf.broker_transport_options["visibility_timeout"])
# A retried chunk waits in its worker, unacknowledged, until its countdown ends: every countdown stays
# well below the visibility timeout, or Redis would hand the waiting chunk to a second worker.
RETRY_BACKOFF_MAX_S = max(1, _VISIBILITY_S // 2)
MAX_RETRIES = int(app.conf.get("k2_chunk_retries", 8))


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


def failure_reason(exc: BaseException, retries: int) -> str:
    """What the report says about a chunk that raised."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return f"took longer than the chunk time limit ({app.conf.task_soft_time_limit}s) and was stopped"
    text = f"{type(exc).__name__}: {exc}"
    return f"gave up after {retries} retries: {text}" if retries else text


class ChunkTask(Task):  # type: ignore[misc]
    """A chunk task that records a failed result whatever it raised, so the job still reconciles.

    The result is recorded before Celery marks the task failed: that marking can end the chord, whose error
    callback reconciles the job at once and must find the result there.
    """

    def retry(self, *args: Any, exc: BaseException | None = None, max_retries: int | None = None, **kwargs: Any) -> Any:
        limit = self.max_retries if max_retries is None else max_retries
        if exc is not None and limit is not None and self.request.retries >= limit:
            self.record_failure(self.request.args, exc)  # Celery's retry raises `exc` now: the chunk has failed
        return super().retry(*args, exc=exc, max_retries=max_retries, **kwargs)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        self.record_failure(args, exc)  # kept if recorded already: a failed result never replaces another

    def record_failure(self, args: Any, exc: BaseException) -> None:
        try:
            job_id, plan = str(args[0]), ChunkPlan(**args[1])
        except (IndexError, KeyError, TypeError, ValueError):
            log.error("malformed chunk task (args %r): %s", args, exc)
            return
        result = chunk_result(plan, FAILED, {}, failure_reason(exc, self.request.retries))
        try:
            worker_clients().ledger.record_result(job_id, plan.index, result)
        except RedisError as redis_exc:  # the job supervisor finds the chunk without a result later
            log.error("chunk %s of job %s failed (%s); Redis did not take it: %s", plan.index, job_id, exc, redis_exc)


@app.task(
    name="k2jobs.process_chunk",
    base=ChunkTask,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(PublishError, RedisError),
    dont_autoretry_for=(ChunkFenced,),
    max_retries=MAX_RETRIES,
    retry_backoff=1,
    retry_backoff_max=RETRY_BACKOFF_MAX_S,
    retry_jitter=True,
)
def process_chunk_task(self: Task, job_id: str, chunk: dict[str, Any], after: int | None = None) -> dict[str, Any]:
    """Load one chunk of a job into Kafka, exactly once; with `after`, only once that chunk has committed."""
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
            after=after,
        )
    except UnsafePathError as exc:
        result = chunk_result(plan, FAILED, {}, str(exc))
        clients.ledger.record_result(job_id, plan.index, result)
    except ChunkFenced:
        log.warning("chunk %s of job %s is being loaded by a newer attempt", plan.index, job_id)
        raise Ignore() from None
    except (PublishError, RedisError):
        raise  # retried (autoretry_for); recorded by ChunkTask.retry when no retry is left
    except Exception as exc:
        self.record_failure((job_id, chunk), exc)
        raise
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
    """Chord callback (and its error callback): reconcile the job from Redis, not from the header results."""
    ledger = worker_clients().ledger
    report = finish_job_if_done(ledger, job_id)
    if report is None:
        return {"job_id": job_id, "status": "running"}
    return {"job_id": job_id, "status": report["status"], "totals": report["totals"]}
