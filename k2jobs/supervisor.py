"""The job supervisor: jobs that stopped moving (lost messages, crashed services) are driven on to their end.

Every worker's main process runs one in a thread; a Redis lock lets one act at a time. A job whose chunks
have not moved for `stall_after_s` has its missing chunks enqueued again (safe: each chunk loads exactly
once whatever runs it), up to MAX_REDRIVES times; then, or when nothing is left to come, it is finished.
"""

from __future__ import annotations

import logging
import threading
import uuid

from redis import RedisError

from .errors import K2Error
from .jobs import enqueue_chunks, finish_job
from .ledger import Ledger
from .reconcile import chunks_to_come

log = logging.getLogger(__name__)
MAX_REDRIVES = 3


def supervise_once(ledger: Ledger, stall_after_s: float) -> list[str]:
    """One round over the running jobs; returns what it did, one line per job acted on."""
    actions = []
    for job_id in ledger.running_jobs():
        if ledger.report(job_id) is not None or ledger.idle_s(job_id) < stall_after_s:
            continue
        plan = ledger.plan(job_id)
        ordered = ledger.job_options(job_id).get("ordered", True)
        missing = chunks_to_come(plan, ledger.results(job_id), ordered)
        redrives = int(ledger.job_meta(job_id).get("redrives", 0))
        if missing and redrives < MAX_REDRIVES:
            ledger.count_redrive(job_id)
            enqueue_chunks(job_id, plan, missing, ordered)
            actions.append(f"job {job_id}: no chunk moved for {stall_after_s:.0f}s, chunks {missing} enqueued again")
        else:
            report = finish_job(ledger, job_id)
            actions.append(f"job {job_id}: finished by the supervisor, {report['status']}")
    return actions


class Supervisor(threading.Thread):
    """Runs supervise_once every `interval_s`, while it holds the lock (one supervisor acts at a time)."""

    def __init__(self, ledger: Ledger, stall_after_s: float, interval_s: float = 5.0) -> None:
        super().__init__(name="k2jobs-supervisor", daemon=True)
        self.ledger, self.stall_after_s, self.interval_s = ledger, stall_after_s, interval_s
        self.stopping = threading.Event()
        self._token = uuid.uuid4().hex

    def run(self) -> None:
        while not self.stopping.wait(self.interval_s):
            try:
                if self.ledger.hold_supervisor_lock(self._token, ttl_s=max(1, int(self.interval_s * 3))):
                    for action in supervise_once(self.ledger, self.stall_after_s):
                        log.warning("%s", action)
            except (RedisError, K2Error, OSError) as exc:  # services away: the next round tries again
                log.warning("job supervisor: %s", exc)
            except Exception:  # noqa: BLE001 - the thread must outlive any one bad round
                log.exception("job supervisor round failed")

    def stop(self) -> None:
        self.stopping.set()
