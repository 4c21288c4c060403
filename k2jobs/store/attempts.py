"""Where a chunk's attempts are, and whether one can still run it: queued, reserved, running or lost; pure.

A chunk that waits in the queue for hours is not stalled: only a chunk none of whose attempts is queued
(in Redis since the last time Redis could lose writes), reserved by a live worker, or running on a live
worker is lost, and only a lost chunk is enqueued again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

QUEUED, RESERVED, RUNNING, LOST = "queued", "reserved", "running", "lost"


def chunk_state(
    index: int, attempts: dict[str, dict[int, Any]], epoch: str, live: set[str], messages: set[int] | None = None
) -> str:
    """The state of one chunk's liveliest attempt, from Ledger.attempts, the current epoch and the live workers;
    with `messages` (the job's tasks that have a message in Redis), a queued task must have one."""
    lease = attempts["running"].get(index)
    if lease is not None and lease.get("worker") in live:
        return RUNNING
    if attempts["reserved"].get(index) in live:
        return RESERVED
    if attempts["queued"].get(index) == epoch and (messages is None or index in messages):
        # A message sent since Redis last restarted is still there (acks late, restored if unacked), unless a
        # worker died between taking it off the queue and recording it unacked (kombu): then `messages` tells.
        return QUEUED
    return LOST


def workers_named(attempts: dict[str, dict[int, Any]]) -> set[str]:
    """Every worker that holds or runs one of the chunks."""
    running = {lease.get("worker", "") for lease in attempts["running"].values()}
    return running | set(attempts["reserved"].values())


def holder_is_dead(
    holder: dict[str, Any], live: Iterable[str], worker: str, pid: int, pid_alive: Callable[[int], bool]
) -> bool:
    """Whether a chunk's lease belongs to an attempt that cannot run any more, seen from an attempt on `worker`
    in process `pid`.

    Its worker stopped beating (killed, frozen); or it ran in a process of this very worker that is gone (a
    pool process that crashed or was killed by the time limit); or it ran in this very process, which runs one
    task at a time: an earlier attempt that could not release it (Redis was away when it ended).
    """
    if holder.get("worker") not in set(live):
        return True
    if holder.get("worker") != worker:
        return False
    held_by = int(holder.get("pid", 0))
    return held_by == pid or not pid_alive(held_by)
