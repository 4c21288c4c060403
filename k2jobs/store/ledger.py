"""The Ledger: k2jobs' whole record in Redis, one object made of its parts (jobs, chunk attempts, results, what
was loaded). Key names are in store/keys.py; each write is safe to repeat."""

from __future__ import annotations

from typing import Any

import redis

from k2jobs.errors import RedisUnavailable
from k2jobs.store.chunk_attempts import AttemptRecords
from k2jobs.store.jobs import JobRecords
from k2jobs.store.keys import test_event_key
from k2jobs.store.loaded import LoadedRecords
from k2jobs.store.refusals import redis_failure
from k2jobs.store.results import ResultRecords


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A Redis client that fails within `timeout_s` instead of hanging."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s + 25)


class Ledger(JobRecords, AttemptRecords, ResultRecords, LoadedRecords):
    """A job's plan, per-chunk results, progress and report, kept in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis: Any = client  # bytes replies (no decode_responses)
        for part in type(self).__mro__:
            for attribute, script in vars(part).get("SCRIPTS", {}).items():
                setattr(self, attribute, client.register_script(script))

    def ping(self) -> None:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise RedisUnavailable(redis_failure(exc)) from exc

    def note_test_event(self, name: str, value: str) -> None:
        """Where a test's fault hook stopped (k2:test:<name>), so the test can strike at that moment."""
        self.redis.set(test_event_key(name), value, ex=600)

    def first_test_event(self, name: str) -> bool:
        """Whether this is the first time a test's fault hook reached `name` (k2:test:<name>), of all processes."""
        return bool(self.redis.set(test_event_key(name), "1", ex=600, nx=True))
