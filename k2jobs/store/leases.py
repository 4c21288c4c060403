"""A chunk's lease: which attempt runs it now, kept alive by that attempt while it works.

The lease lives `LEASE_TTL_S` and the attempt renews it every `RENEW_EVERY_S` from a thread of its own, so
it is renewed whatever the attempt is doing (parsing, waiting for Kafka, committing). An attempt whose
process died (killed, crashed, stopped by the hard time limit) or that ended while Redis was away (its
release failed) leaves a lease that ends within `LEASE_TTL_S`: the supervisor then sees the chunk lost.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import orjson
from redis import RedisError

from k2jobs.store.attempts import holder_is_dead
from k2jobs.store.ledger import Ledger

log = logging.getLogger(__name__)
LEASE_TTL_S = 10
RENEW_EVERY_S = 3.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def take_lease(ledger: Ledger, job_id: str, index: int, holder: dict[str, Any]) -> bool:
    """Whether this attempt may run the chunk: no other attempt is, or the one holding it is dead."""
    current = ledger.take_lease(job_id, index, holder, LEASE_TTL_S)
    if current is None:
        return True
    other = orjson.loads(current)
    live = ledger.live_workers([other.get("worker", "")])
    if holder_is_dead(other, live, holder["worker"], holder["pid"], _pid_alive):
        return ledger.replace_lease(job_id, index, current, holder, LEASE_TTL_S)
    return False


class LeaseKeeper(threading.Thread):
    """Renews one attempt's lease until stopped; the lease is released by whoever stops it."""

    def __init__(self, ledger: Ledger, job_id: str, index: int, holder: dict[str, Any]) -> None:
        super().__init__(name=f"k2jobs-lease-{job_id}-{index}", daemon=True)
        self.ledger, self.job_id, self.index, self.holder = ledger, job_id, index, holder
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(RENEW_EVERY_S):
            try:
                if not self.ledger.renew_lease(self.job_id, self.index, self.holder, LEASE_TTL_S):
                    # Another attempt holds it now (this one was taken for dead): that one fences this one.
                    log.warning("chunk %s of job %s: lease taken by another attempt", self.index, self.job_id)
                    return
            except RedisError as exc:  # Redis away: renewed again (or taken back) when it returns
                log.warning("chunk %s of job %s: lease not renewed: %s", self.index, self.job_id, exc)

    def stop(self) -> None:
        """Stop renewing and release the lease (a release that fails leaves it to expire)."""
        self.stopping.set()
        self.join(timeout=RENEW_EVERY_S)
        self.ledger.release_lease(self.job_id, self.index, self.holder)
