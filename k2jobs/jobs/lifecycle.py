"""A job's life after submit: its chunks enqueued, re-driven when lost, resumed, and the job finished."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

from celery import chain, chord
from celery.canvas import Signature

from k2jobs.app import app
from k2jobs.jobs.reconcile import chunks_to_come, reconcile_job
from k2jobs.plan.model import JobPlan
from k2jobs.plan.status import ChunkStatus, JobStatus
from k2jobs.store.attempts import RUNNING, chunk_state, workers_named
from k2jobs.store.ledger import Ledger


class EnqueueLedger(Protocol):
    """What enqueueing a job's chunks records in the ledger (the store's Ledger)."""

    def mark_queued(self, job_id: str, indexes: Iterable[int]) -> None: ...


class AttemptLedger(Protocol):
    """Where a job's chunk attempts are and which workers are alive (the store's Ledger)."""

    def attempts(self, job_id: str, indexes: list[int]) -> dict[str, dict[int, Any]]: ...

    def live_workers(self, names: Iterable[str]) -> set[str]: ...


class ReportLedger(Protocol):
    """What finishing a job reads and saves in the ledger (the store's Ledger)."""

    def job_meta(self, job_id: str) -> dict[str, str]: ...

    def plan(self, job_id: str) -> JobPlan: ...

    def results(self, job_id: str) -> dict[int, dict[str, Any]]: ...

    def job_options(self, job_id: str) -> dict[str, Any]: ...

    def save_report(self, job_id: str, report: dict[str, Any]) -> dict[str, Any]: ...

    def remember_loaded(self, job_id: str, plan: JobPlan) -> None: ...


class FinishLedger(ReportLedger, AttemptLedger, Protocol):
    """What finishing a job once no chunk of it can still run uses of the ledger (the store's Ledger)."""


def _chunk_task(job_id: str, index: int, after: int | None) -> Signature:
    """The task of one chunk: ids only, whatever the job's size; `after` must have committed first (ordered)."""
    return app.signature("k2jobs.process_chunk", args=(job_id, index, after), immutable=True)


def ordered_header(job_id: str, plan: JobPlan, indexes: list[int]) -> tuple[list[Signature], list[int]]:
    """One chain per Kafka key and topic, its tasks one after the other in file and line order; and the
    chains' first tasks (the ones enqueued now).

    Keys load in parallel on different workers; within a key, task k+1 is enqueued only when task k has
    finished, so no worker ever waits for a task queued behind it. A task shared by small keys (each whole
    in it, in order) is a chain of its own, sent once.
    """
    wanted = set(plan.tasks_of(indexes))
    header: list[Signature] = []
    heads: list[int] = []
    for chain_ in plan.key_tasks():
        pending = [u for u in chain_ if u in wanted]
        if not pending or pending[0] in heads:
            continue
        start = chain_.index(pending[0])  # committed tasks before it stay as they are
        tasks = [_chunk_task(job_id, chain_[n], chain_[n - 1] if n else None) for n in range(start, len(chain_))]
        header.append(tasks[0] if len(tasks) == 1 else chain(*tasks))
        heads.append(chain_[start])
    return header, heads


def enqueue_chunks(ledger: EnqueueLedger, job_id: str, plan: JobPlan, indexes: list[int], ordered: bool = True) -> None:
    """The chunks as the header of a chord whose callback reconciles the job.

    Ordered: one chain per key (see ordered_header). Unordered: one task per chunk, largest first, so the job
    ends on small chunks and no worker is left with a big one while the others sit idle. Every chunk sent is
    marked queued first: the supervisor never takes a chunk waiting in the queue for a lost one.
    """
    if ordered:
        header, heads = ordered_header(job_id, plan, indexes)
    else:
        heads = sorted(plan.tasks_of(indexes), key=lambda i: -sum(c.rows for c in plan.task_chunks(i)))
        header = [_chunk_task(job_id, i, None) for i in heads]
    ledger.mark_queued(job_id, heads)
    callback = app.signature("k2jobs.reconcile_job", args=(job_id,), immutable=False)
    # A chunk that raised (retries exhausted, time limit, a bug) fails the chord: reconcile then all the same.
    callback.link_error(app.signature("k2jobs.reconcile_job", args=([], job_id), immutable=True))
    chord(header)(callback)
    forget_results()


def forget_results() -> None:
    """Stop listening for the results of what was just sent: nobody here waits on them.

    Celery's Redis backend subscribes to every sent task's result channel (and keeps a waiter for each
    header task); closing its result consumer's subscriptions leaves none behind, in a client or in a worker's
    supervisor, and a waiter's __del__ then has nothing to unsubscribe at interpreter exit (where it would
    print a traceback after the report). The next enqueue subscribes again, on a new connection.
    """
    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is None:  # a backend without subscriptions
        return
    consumer.stop()
    consumer.subscribed_to.clear()


def uncommitted(plan: JobPlan, results: dict[int, dict[str, Any]]) -> list[int]:
    return [c.index for c in plan.chunks if results.get(c.index, {}).get("status") != ChunkStatus.COMMITTED]


def running_chunks(ledger: AttemptLedger, job_id: str, plan: JobPlan, indexes: list[int]) -> list[int]:
    """Which tasks loading these chunks an attempt on a live worker is running now."""
    tasks = plan.tasks_of(indexes)
    attempts = ledger.attempts(job_id, tasks)
    live = ledger.live_workers(workers_named(attempts))
    return [i for i in tasks if chunk_state(i, attempts, "", live) == RUNNING]


def finish_job_if_done(ledger: FinishLedger, job_id: str, plan: JobPlan | None = None) -> dict[str, Any] | None:
    """Finish the job unless a chunk of it can still run (then None). `plan`: the job's, if the caller holds it
    (the supervisor keeps each running job's plan; a plan never changes once recorded), else it is read.

    The chord's callbacks, the supervisor and a waiting client all finish jobs through here, so a job gets a
    report only once every chunk has a result or is held back, and no attempt is running any uncommitted chunk.
    """
    plan = ledger.plan(job_id) if plan is None else plan
    results = ledger.results(job_id)
    if chunks_to_come(plan, results, ledger.job_options(job_id).get("ordered", True)):
        return None
    if running_chunks(ledger, job_id, plan, uncommitted(plan, results)):
        return None
    return finish_job(ledger, job_id, plan, results)


def finish_job(
    ledger: ReportLedger, job_id: str, plan: JobPlan | None = None, results: dict[int, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Reconcile a job from its plan and chunk results (each read unless the caller read it), and save the report
    (the first one saved stays)."""
    created = float(ledger.job_meta(job_id)["created"])
    plan = ledger.plan(job_id) if plan is None else plan
    results = ledger.results(job_id) if results is None else results
    ordered = ledger.job_options(job_id).get("ordered", True)
    report = ledger.save_report(job_id, reconcile_job(job_id, plan, results, time.time() - created, ordered))
    if report["status"] == JobStatus.SUCCEEDED:
        ledger.remember_loaded(job_id, plan)
    return report


def resume_job(ledger: Ledger, job_id: str) -> list[int]:
    """Re-enqueue the chunks of a job that are not committed; committed ones never run again.

    Ordered jobs go on, key by key, from the first chunk that did not commit. On a job still running this
    is harmless: a second attempt of a chunk yields to one running it, and any attempt that may follow an
    earlier one asks Kafka whether the chunk committed before publishing (tests/test_exactly_once.py).
    """
    plan = ledger.plan(job_id)
    pending = uncommitted(plan, ledger.results(job_id))
    ledger.clear_failures(job_id, pending)
    ledger.reset_attempts(job_id, plan.tasks_of(pending))
    ledger.clear_report(job_id)
    ledger.set_running(job_id)
    if pending:
        enqueue_chunks(ledger, job_id, plan, pending, ledger.job_options(job_id).get("ordered", True))
    else:
        finish_job(ledger, job_id)
    return pending
