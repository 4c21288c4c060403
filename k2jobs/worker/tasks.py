"""Thin Celery tasks: build dependencies, call one function, return a small JSON-able dict."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import uuid
from typing import Any

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded, TimeLimitExceeded
from redis import RedisError

from k2jobs.app import app
from k2jobs.errors import CommitUncertain, K2Error, PublishError, UnsafePathError
from k2jobs.jobs.lifecycle import finish_job_if_done
from k2jobs.jobs.supervisor import HEARTBEAT_TTL_S
from k2jobs.kafka.producer import ChunkFenced, ChunkTransaction
from k2jobs.load.chunk import Attempt, process_chunk
from k2jobs.load.results import chunk_result, fail_all
from k2jobs.plan.model import ChunkPlan, TaskPlan
from k2jobs.plan.status import ChunkStatus
from k2jobs.store.leases import LeaseKeeper, take_lease
from k2jobs.worker.clients import WorkerClients, incarnation, worker_clients

log = logging.getLogger(__name__)
PROGRESS = "PROGRESS"
FLOWER_PROGRESS_EVERY_S = 0.5  # how often a running task's state shown in Flower is updated
_VISIBILITY_S = int(app.conf.broker_transport_options["visibility_timeout"])
# A retried chunk waits in its worker, unacknowledged, until its countdown ends. Nothing depends on the
# countdown staying below the visibility timeout (a second copy of the chunk yields to the attempt running
# it), but a shorter one keeps copies rare.
RETRY_BACKOFF_MAX_S = max(1, _VISIBILITY_S // 2)
MAX_RETRIES = int(app.conf.get("k2_chunk_retries", 8))
RETRY_FOR_S = int(app.conf.get("k2_chunk_retry_s", 300))  # and retried this long since the first failure
# A chunk whose attempts ended this often without an outcome (their process died: segfault, out of memory,
# killed; or the time limit stopped them while committing) is failed, once Kafka says it did not commit.
MAX_UNFINISHED = 3


class FlowerProgress:
    """Shows a running chunk's rows in Flower: a PROGRESS state and a task-progress event, at most every 0.5 s."""

    def __init__(self, task: Task, job_id: str, plan: ChunkPlan) -> None:
        self.task, self.job_id, self.plan = task, job_id, plan
        self.last = 0.0

    def __call__(self, rows_done: int) -> None:
        now = time.monotonic()
        if now - self.last < FLOWER_PROGRESS_EVERY_S or self.task.request.id is None:
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


def failure_reason(exc: BaseException, retries: int, retried_s: float = 0.0) -> str:
    """What the report says about a chunk that raised."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return f"took longer than the chunk time limit ({app.conf.task_soft_time_limit}s) and was stopped"
    text = f"{type(exc).__name__}: {exc}"
    return f"gave up after {retries} retries in {retried_s:.0f}s: {text}" if retries else text


def out_of_retries(retries: int, retried_s: float, max_retries: int, retry_for_s: float) -> bool:
    """A chunk gives up once it has retried `max_retries` times and for `retry_for_s` seconds, both."""
    return retries >= max_retries and retried_s >= retry_for_s


def give_up_reason(unfinished: int) -> str:
    return (
        f"{unfinished} attempts ended without finishing (the worker process died: killed, out of memory or a "
        "crash; or the time limit stopped it while committing): not tried again"
    )


class ChunkTask(Task):  # type: ignore[misc]
    """A chunk task that records a failed result whatever it raised, so the job still reconciles.

    The result is recorded before Celery marks the task failed: that marking can end the chord, whose error
    callback reconciles the job at once and must find the result there. An attempt that reached its commit is
    never recorded failed (CommitUncertain): the next attempt asks Kafka.
    """

    def retry(
        self, *args: Any, exc: BaseException | None = None, max_retries: int | None = None, **options: Any
    ) -> Any:
        """Celery's retry with k2jobs' budget (retries and seconds, see out_of_retries). The first failure's time
        travels in the retried message (`first_failure`), so any worker can measure the budget."""
        retries = self.request.retries
        first = (self.request.kwargs or {}).get("first_failure") or time.time()
        retried_s = time.time() - first
        if exc is not None and out_of_retries(retries, retried_s, MAX_RETRIES, RETRY_FOR_S):
            self.record_failure(self.request.args, exc, retried_s)
            max_retries = retries  # Celery's retry raises `exc` now: the chunk has failed
        else:
            self._mark_queued(self.request.args)  # the retry's message is sent next
            max_retries = retries + 1
            options["kwargs"] = {**(options.get("kwargs") or self.request.kwargs or {}), "first_failure": first}
        return super().retry(*args, exc=exc, max_retries=max_retries, **options)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded):
            # The hard time limit killed the process, perhaps mid-commit (Celery >= 5.7 calls on_failure for it,
            # from the worker's main process). That is an attempt that died, not a failure: its lease ends, the
            # supervisor enqueues the chunk again, and MAX_UNFINISHED such deaths fail it once Kafka is asked.
            log.error("chunk task %s (args %r) killed by the hard time limit: it will be tried again", task_id, args)
            return
        self.record_failure(args, exc)  # kept if recorded already: a failed result never replaces another

    def _mark_queued(self, args: Any) -> None:
        try:
            worker_clients().ledger.mark_queued(str(args[0]), [int(args[1])])
        except (IndexError, TypeError, ValueError, RedisError) as exc:
            log.warning("could not mark a retried chunk queued (args %r): %s", args, exc)

    def record_failure(self, args: Any, exc: BaseException, retried_s: float = 0.0) -> None:
        if isinstance(exc, CommitUncertain):
            log.error("chunk (args %r) reached its commit, then: %s; the next attempt asks Kafka", args, exc)
            return
        clients = worker_clients()
        try:
            job_id, index = str(args[0]), int(args[1])
            chunks = clients.task(job_id, index).chunks
        except (IndexError, TypeError, ValueError, K2Error, RedisError) as lookup_exc:
            log.error("malformed chunk task (args %r): %s (%s)", args, exc, lookup_exc)
            return
        reason = failure_reason(exc, self.request.retries, retried_s)
        try:
            clients.ledger.record_results(job_id, [chunk_result(c, ChunkStatus.FAILED, {}, reason) for c in chunks])
        except RedisError as redis_exc:  # the job supervisor finds the chunk without a result later
            log.error("chunk %s of job %s failed (%s); Redis did not take it: %s", index, job_id, exc, redis_exc)


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
def process_chunk_task(
    self: Task, job_id: str, index: int, after: int | None = None, first_failure: float | None = None
) -> dict[str, Any]:
    """Load one chunk of a job into Kafka, exactly once; with `after`, only once that chunk has committed.
    `first_failure`: set by ChunkTask.retry on retried messages (the retry budget's clock)."""
    clients = worker_clients()
    task = clients.task(job_id, int(index))  # a message naming any chunk of a task runs that task
    plan = task.chunks[0]
    worker = incarnation(self.request.hostname or "unknown")
    started = time.monotonic()
    seen = clients.ledger.start_attempt(job_id, plan.index, worker, HEARTBEAT_TTL_S)
    finished = False  # ended with a known outcome: not a crash, not a commit left uncertain
    try:
        holder = {"worker": worker, "pid": os.getpid(), "token": uuid.uuid4().hex}
        if not take_lease(clients.ledger, job_id, plan.index, holder):
            log.info("chunk %s of job %s is being loaded by another attempt: this one yields", plan.index, job_id)
            finished = True
            raise Ignore()
        keeper = LeaseKeeper(clients.ledger, job_id, plan.index, holder)
        keeper.start()
        try:
            result = _run_attempt(self, clients, job_id, task, after, seen)
            finished = True
        except CommitUncertain as exc:
            # Kafka failing the commit is retried like any Kafka error; the time limit stopping it counts as
            # a process that died there (a chunk that needs longer than the limit must not loop).
            finished = not isinstance(exc.__cause__, SoftTimeLimitExceeded)
            raise
        except BaseException:
            finished = True
            raise
        finally:
            keeper.stop()
        if task.next is not None and clients.is_ordered(job_id):
            clients.ledger.mark_queued(job_id, [task.next])  # the chain sends it when this task returns
    finally:
        if finished:
            with contextlib.suppress(RedisError):  # counted as unfinished at worst: the limit has room for it
                clients.ledger.end_attempt(job_id, plan.index)
    log.info(
        "chunk done job_id=%s chunk=%s file=%s rows=%s published=%s rejected=%s status=%s duration_s=%.3f",
        job_id,
        plan.index,
        result["path"],
        result["rows"],
        result["published"],
        result["rejected"],
        result["status"],
        time.monotonic() - started,
    )
    _finish_if_last(clients, job_id)
    return result


def _finish_if_last(clients: WorkerClients, job_id: str) -> None:
    """Report the job as soon as its last chunk has a result, without waiting for the chord's callback: after a
    worker died, that callback waits for the dead worker's message to come back, and clients would wait out their
    grace (CALLBACK_GRACE_S) instead. The chord's callback, the supervisor and waiting clients finish it the same
    way; the first report saved stays."""
    with contextlib.suppress(RedisError, K2Error):
        meta = clients.ledger.job_meta(job_id)
        if int(meta.get("chunks_done", 0)) >= int(meta["chunks"]) and clients.ledger.report(job_id) is None:
            finish_job_if_done(clients.ledger, job_id)


def _run_attempt(
    task: Task, clients: WorkerClients, job_id: str, task_plan: TaskPlan, after: int | None, seen: dict[str, Any]
) -> dict[str, Any]:
    settings = clients.settings
    unfinished = seen["starts"] - 1 - seen["ends"]
    plan = task_plan.chunks[0]
    gzipped = list(dict.fromkeys(c.data_path for c in task_plan.chunks if c.compression))
    attempt = Attempt(
        job_id,
        plan,
        after,
        after_chunks=None if after is None else [c.index for c in clients.task(job_id, after).chunks],
        task_chunks=task_plan.chunks,
        gzip_indexes=clients.ledger.gzip_indexes(job_id, gzipped),
        progress_every_s=settings.progress_every_s,
        # Redis keeps every start unless it restarted since the job began: then any attempt may have run before.
        rerun=seen["starts"] > 1 or seen["job_epoch"] != seen["epoch"],
        marker_start=seen["marker_start"],
        before_commit=_pause_before_commit(clients, job_id, plan.index),
        after_commit=_note_commit(clients, job_id, plan.index),
        give_up=None if unfinished < MAX_UNFINISHED else give_up_reason(unfinished),
    )
    try:  # a path that leads outside the data root is refused when the chunk is read (UnsafePathError)
        return process_chunk(
            attempt,
            settings.data_root,
            settings.batch_rows,
            clients.ledger,
            clients.markers,
            lambda job, index: ChunkTransaction(settings, job, index),
            FlowerProgress(task, job_id, plan),
        )
    except UnsafePathError as exc:
        return fail_all(clients.ledger, job_id, attempt.chunks, str(exc))
    except ChunkFenced:
        log.warning("chunk %s of job %s is being loaded by a newer attempt: this one yields", plan.index, job_id)
        raise Ignore() from None
    except (Exception, SoftTimeLimitExceeded) as exc:
        if attempt.commit_started and not isinstance(exc, CommitUncertain):
            raise CommitUncertain(f"{type(exc).__name__}: {exc}") from exc
        if isinstance(exc, SoftTimeLimitExceeded):  # Kafka slow (a leader election): another attempt may do better
            raise PublishError(failure_reason(exc, 0)) from exc
        if not isinstance(exc, PublishError | RedisError):
            task.record_failure((job_id, plan.index), exc)
        raise  # PublishError, RedisError: retried (autoretry_for); recorded by ChunkTask.retry when no retry is left


def _pause_before_commit(clients: WorkerClients, job_id: str, index: int) -> Any:
    """Test hooks between the marker's send and the commit: K2_TEST_PAUSE_BEFORE_COMMIT_S stops there, and says
    so; K2_TEST_STUCK_BEFORE_COMMIT=1 makes the first attempt (of all workers) that gets there hang deaf to the
    soft time limit, as a call blocked inside librdkafka is, until the hard limit kills its process."""
    pause, stuck = clients.settings.test_pause_before_commit_s, clients.settings.test_stuck_before_commit
    if not pause and not stuck:
        return None

    def pause_here() -> None:
        clients.ledger.note_test_event("committing", f"{job_id}:{index}:{os.getpid()}")
        if stuck and clients.ledger.first_test_event("stuck"):
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # billiard's soft time limit signal
            while True:
                time.sleep(1)
        time.sleep(pause)

    return pause_here


def _note_commit(clients: WorkerClients, job_id: str, index: int) -> Any:
    """Test hook (K2_TEST_NOTE_COMMITS=1): push to k2:test:committed the moment a commit returns, so a test
    blocked on it can kill the broker while it writes the commit's markers."""
    if not clients.settings.test_note_commits:
        return None
    return lambda: clients.ledger.redis.rpush("k2:test:committed", f"{job_id}:{index}")


@app.task(name="k2jobs.reconcile_job", acks_late=True)
def reconcile_job_task(_header_results: list[Any], job_id: str) -> dict[str, Any]:
    """Chord callback (and its error callback): reconcile the job from Redis, not from the header results."""
    clients = worker_clients()
    # Most jobs were finished by their last chunk's task (_finish_if_last): a saved report is final until `resume`,
    # and reconciling again would read every chunk's result for nothing while the next job runs.
    report = clients.ledger.report(job_id) or finish_job_if_done(clients.ledger, job_id)
    if report is None:
        return {"job_id": job_id, "status": "running"}
    return {"job_id": job_id, "status": report["status"], "totals": report["totals"]}


@app.task(name="k2jobs.scan_directory", acks_late=False, ignore_result=True)
def scan_directory_task(directory: str) -> dict[str, Any]:
    """One scheduled scan of `directory` (under the data root) for new files and appended lines: Celery beat sends
    it every K2_WATCH_EVERY_S seconds (`stack up --watch DIR`); see k2jobs/watch.py."""
    from k2jobs.jobs.submit import SubmitOptions
    from k2jobs.jobs.watch import Watcher
    from k2jobs.sources.s3 import is_object_url

    clients = worker_clients()
    settings = clients.settings
    options = SubmitOptions(chunk_rows=settings.chunk_rows, value_format=settings.value_format)

    def say(event: dict[str, Any]) -> None:
        log.info("watch %s: %s", directory, event)

    where = directory if is_object_url(directory) else settings.data_root / directory
    result = Watcher(settings, clients.ledger, where, options, say).scan_scheduled()
    log.info("scan of %s: %s", directory, result)
    return result
