"""The job supervisor: lost chunks are enqueued again, and jobs whose chunks all ended are finished.

Every worker's main process runs one in a thread; a Redis lock lets one act at a time. Each round also beats
the worker's heartbeat, which is how other attempts and supervisors know its chunks still run. A chunk is
re-driven only when it has been lost (no attempt queued, reserved or running: see k2jobs.store.attempts) for
`stall_after_s`; a chunk waiting in the queue behind other jobs is never touched, however long it waits. A
chunk marked queued whose message is neither in the queue nor delivered-and-unacknowledged (a worker killed as
it took the message off the queue loses it: kombu records it unacked only after the pop) is lost, once it has
been queued for `stall_after_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from redis import RedisError
from redis.exceptions import LockError

from k2jobs.jobs.lifecycle import EnqueueLedger, FinishLedger, enqueue_chunks, finish_job_if_done
from k2jobs.jobs.reconcile import chunks_to_come
from k2jobs.plan.model import JobPlan
from k2jobs.store.attempts import LOST, QUEUED, chunk_state, workers_named
from k2jobs.store.ledger import Ledger

log = logging.getLogger(__name__)
HEARTBEAT_S = 5.0
HEARTBEAT_TTL_S = 15  # a worker that has not beaten for this long is dead or frozen: its chunks are lost
MESSAGES_READ_MAX = 2_000  # a queue longer than this is not read for lost messages (later, once it is shorter)
# A job whose round takes a while (it reads every chunk's result: a job of 100,000 files) is looked at again only
# once this many times that long has passed: supervising keeps to about a tenth of the worker's main process.
ROUND_SPACING = 10.0


class SupervisedLedger(FinishLedger, EnqueueLedger, Protocol):
    """What a supervision round reads and records in the ledger (the store's Ledger)."""

    def epoch(self) -> str: ...

    def running_jobs(self) -> list[str]: ...

    def report(self, job_id: str) -> dict[str, Any] | None: ...

    def chunk_messages(self, limit: int) -> set[tuple[str, int]] | None: ...

    def count_redrive(self, job_id: str, chunks: int) -> int: ...


class JobSupervision:
    """One supervisor's memory across rounds: since when each chunk has been lost, and the plans of the running
    jobs (a plan never changes once recorded: read once per job, not every round)."""

    def __init__(self, ledger: SupervisedLedger, stall_after_s: float) -> None:
        self.ledger, self.stall_after_s = ledger, stall_after_s
        self.plans: dict[str, JobPlan] = {}
        self.next_look: dict[str, float] = {}  # job -> when (monotonic) its next round is due (ROUND_SPACING)
        self.lost_since: dict[tuple[str, int], float] = {}
        self.queued_since: dict[tuple[str, int], float] = {}
        self._messages: set[tuple[str, int]] | None | bool = False  # read at most once a round (False: not yet)

    def messages(self) -> set[tuple[str, int]] | None:
        """The chunk task messages in Redis this round (None: too many to read; then none counts as lost)."""
        if self._messages is False:
            self._messages = self.ledger.chunk_messages(MESSAGES_READ_MAX)
        return self._messages  # type: ignore[return-value]

    def round(self, now: float | None = None) -> list[str]:
        """One round over the running jobs; returns what it did, one line per action. A job that raises is
        logged and skipped: the others are still supervised."""
        now = time.monotonic() if now is None else now
        epoch = self.ledger.epoch()
        self._messages = False
        actions: list[str] = []
        running = self.ledger.running_jobs()
        for job_id in [j for j in self.plans if j not in running]:
            del self.plans[job_id]
        for job_id in [j for j in self.next_look if j not in running]:
            del self.next_look[job_id]
        for job_id in running:
            if now < self.next_look.get(job_id, now):
                continue
            try:
                self._plan(job_id)  # read once per job, not timed: what is spaced is the work of every round
                started = time.perf_counter()
                actions.extend(self.supervise_job(job_id, epoch, now))
                self.next_look[job_id] = now + (time.perf_counter() - started) * ROUND_SPACING
            except Exception as exc:  # noqa: BLE001 - one broken job must not stop the supervision of the others
                log.exception("job supervisor: job %s", job_id)
                actions.append(f"job {job_id}: not supervised this round: {type(exc).__name__}: {exc}")
        return actions

    def supervise_job(self, job_id: str, epoch: str, now: float) -> list[str]:
        if self.ledger.report(job_id) is not None:
            return []
        plan = self._plan(job_id)
        ordered = self.ledger.job_options(job_id).get("ordered", True)
        results = self.ledger.results(job_id)
        to_come = chunks_to_come(plan, results, ordered)
        if not to_come:  # every chunk ended or is held back: finished unless an attempt still runs one
            report = finish_job_if_done(self.ledger, job_id, plan)
            return [] if report is None else [f"job {job_id}: finished by the supervisor, {report['status']}"]
        tasks = plan.tasks_of(to_come)  # a task of several chunks is named by its first
        attempts = self.ledger.attempts(job_id, tasks)
        live = self.ledger.live_workers(workers_named(attempts))
        states = {i: chunk_state(i, attempts, epoch, live) for i in tasks}
        for key in [k for k in self.queued_since if k[0] == job_id and states.get(k[1]) != QUEUED]:
            del self.queued_since[key]
        # A task queued this long may have lost its message with a worker that died taking it: look for it.
        waited = [i for i in tasks if states[i] == QUEUED and self._since(self.queued_since, job_id, i, now)]
        messages = self.messages() if waited else None
        if messages is not None:
            ours = {i for j, i in messages if j == job_id}
            states.update({i: chunk_state(i, attempts, epoch, live, ours) for i in waited})
        lost = [i for i in tasks if states[i] == LOST]
        for key in [k for k in self.lost_since if k[0] == job_id and k[1] not in lost]:
            del self.lost_since[key]
        due = [i for i in lost if self._since(self.lost_since, job_id, i, now)]
        if not due:
            return []
        self.ledger.count_redrive(job_id, len(due))
        enqueue_chunks(self.ledger, job_id, plan, due, ordered)
        for i in due:
            self.lost_since.pop((job_id, i), None)
        return [f"job {job_id}: chunks {due} had no attempt queued, reserved or running: enqueued again"]

    def _plan(self, job_id: str) -> JobPlan:
        plan = self.plans.get(job_id)
        if plan is None:
            plan = self.plans[job_id] = self.ledger.plan(job_id)
        return plan

    def _since(self, since: dict[tuple[str, int], float], job_id: str, index: int, now: float) -> bool:
        """Whether the task has been in this state for `stall_after_s` (counting from the first round that saw it)."""
        return now - since.setdefault((job_id, index), now) >= self.stall_after_s


class Supervisor(threading.Thread):
    """Beats the worker's heartbeat and, while it holds the lock, runs a supervision round every `interval_s`."""

    def __init__(self, ledger: Ledger, worker: str, stall_after_s: float, interval_s: float = HEARTBEAT_S) -> None:
        super().__init__(name="k2jobs-supervisor", daemon=True)
        self.ledger, self.worker, self.interval_s = ledger, worker, interval_s
        self.supervision = JobSupervision(ledger, stall_after_s)
        self.stopping = threading.Event()
        self.lock: Any = ledger.supervisor_lock(ttl_s=interval_s * 3)

    def run(self) -> None:
        while True:
            try:
                self.ledger.heartbeat(self.worker, HEARTBEAT_TTL_S)
                if self._hold_lock():
                    for action in self.supervision.round():
                        log.warning("%s", action)
            except RedisError as exc:  # Redis away: the next round tries again
                log.warning("job supervisor: %s", exc)
            except Exception:  # noqa: BLE001 - the thread must outlive any one bad round
                log.exception("job supervisor round failed")
            if self.stopping.wait(self.interval_s):
                return

    def _hold_lock(self) -> bool:
        """Keep the lock if this supervisor holds it, else try to take it."""
        if self.lock.owned():
            try:
                self.lock.reacquire()
                return True
            except LockError:
                self.supervision.lost_since.clear()
        return bool(self.lock.acquire())

    def stop(self) -> None:
        self.stopping.set()
        try:
            if self.lock.owned():
                self.lock.release()
        except (LockError, RedisError):
            pass
