"""Watching a submitted job until its report: progress, stalls, and the wait's timeout."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis import RedisError

from k2jobs.errors import WaitTimeout
from k2jobs.store.ledger import Ledger

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


def job_progress(ledger: Ledger, job_id: str) -> Progress:
    """Rows and chunks done so far: the job's counters in Redis, which the workers move with every result and
    (throttled) progress write; two reads however many chunks the job has."""
    meta = ledger.job_meta(job_id)
    report = ledger.report(job_id)
    if "chunks_done" in meta:
        rows_done, chunks_done, rejected = int(meta["rows_done"]), int(meta["chunks_done"]), int(meta["rejected"])
    else:  # a job recorded before the counters existed
        results = ledger.results(job_id)
        rows_done, chunks_done = ledger.progress(job_id), len(results)
        rejected = sum(r.get("rejected", 0) for r in results.values())
    return Progress(
        job_id=job_id,
        status=report["status"] if report else meta["status"],
        rows=int(meta["rows"]),
        rows_done=max(0, min(int(meta["rows"]), rows_done)),
        chunks=int(meta["chunks"]),
        chunks_done=chunks_done,
        rejected=rejected,
        elapsed_s=time.time() - float(meta["created"]),
    )


@dataclass
class StallWatch:
    """When a job's numbers last moved, and whether it is time to say that they do not."""

    every_s: float
    moved: float = field(default_factory=time.monotonic)
    warned: float | None = None
    seen: tuple[int, int] | None = None

    def saw(self, progress: Progress, now: float) -> None:
        if (progress.rows_done, progress.chunks_done) != self.seen:
            self.seen, self.moved, self.warned = (progress.rows_done, progress.chunks_done), now, None

    def due(self, now: float) -> bool:
        """True after `every_s` without movement, then again every `every_s` while it lasts."""
        if now - max(self.moved, self.warned or self.moved) < self.every_s:
            return False
        self.warned = now
        return True


def wait_for_report(
    ledger: Ledger,
    job_id: str,
    on_progress: Callable[[Progress], None] | None = None,
    interval_s: float = 0.5,
    timeout_s: float | None = None,
    stall_warn_s: float = 30.0,
    on_stall: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Block until the job's report exists, reconciling it here if the callback was lost.

    When nothing moved (rows, chunks) for `stall_warn_s`, calls `on_stall(seconds)`, again every
    `stall_warn_s` while it lasts; Redis going away counts as nothing moving. After `timeout_s`, raises
    WaitTimeout (the job keeps running).
    """
    started = time.monotonic()
    stall = StallWatch(stall_warn_s, moved=started)
    all_done_since: float | None = None
    while True:
        now = time.monotonic()
        try:
            report = ledger.report(job_id)
            progress: Progress | None = job_progress(ledger, job_id)
        except RedisError:
            report, progress = None, None
        if progress is not None:
            if on_progress is not None:
                on_progress(progress)  # once more at the end, so the display ends on the final numbers
            if report is not None:
                return report
            stall.saw(progress, now)
            if progress.chunks_done >= progress.chunks:
                all_done_since = all_done_since or now
                if now - all_done_since > CALLBACK_GRACE_S:
                    from k2jobs.jobs.lifecycle import finish_job_if_done

                    report = finish_job_if_done(ledger, job_id)
                    if report is not None:
                        return report
            else:
                all_done_since = None
        if on_stall is not None and stall.due(now):
            on_stall(now - stall.moved)
        if timeout_s is not None and now - started >= timeout_s:
            raise WaitTimeout(
                f"job {job_id} has not ended after {timeout_s:g}s of waiting; it keeps running (see `status {job_id}`)"
            )
        pause = interval_s if timeout_s is None else min(interval_s, started + timeout_s - now)
        if pause <= 0:
            continue  # (a zero timeout would block Redis's BLPOP for ever)
        try:
            ledger.wait_for_report_signal(job_id, pause)
        except RedisError:
            time.sleep(pause)
