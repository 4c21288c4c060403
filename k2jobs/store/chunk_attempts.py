"""Where each chunk's attempts are in Redis: queued, reserved, running (its lease), workers' heartbeats, and the
chunk task messages kombu holds."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import orjson

from k2jobs.store.keys import (
    CHUNK_QUEUE,
    TTL_S,
    UNACKED_KEY,
    ends_key,
    job_key,
    lease_key,
    queued_key,
    reserved_key,
    starts_key,
    worker_key,
)
from k2jobs.store.records import Records

_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"""

_REPLACE = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) end return false"""

_RENEW = """local held = redis.call('get', KEYS[1])
if held == ARGV[1] or not held then redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end return 0"""


class AttemptRecords(Records):
    """Chunks' attempts and leases, and workers' heartbeats."""

    SCRIPTS: dict[str, str] = {"_release": _RELEASE, "_replace": _REPLACE, "_renew": _RENEW}
    _release: Any
    _replace: Any
    _renew: Any

    def mark_queued(self, job_id: str, indexes: Iterable[int]) -> None:
        """These chunks' messages are (about to be) in the queue, under the current Redis epoch."""
        epoch = self.epoch()
        mapping = {str(i): epoch for i in indexes}
        if mapping:
            pipe = self.redis.pipeline()
            pipe.hset(queued_key(job_id), mapping=mapping)
            pipe.expire(queued_key(job_id), TTL_S)
            pipe.execute()

    def mark_reserved(self, job_id: str, index: int, worker: str) -> None:
        """A worker holds the chunk's message (prefetched, or waiting for a retry's countdown)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(reserved_key(job_id), str(index), worker)
        pipe.expire(reserved_key(job_id), TTL_S)
        pipe.execute()

    def start_attempt(self, job_id: str, index: int, worker: str, heartbeat_s: int) -> dict[str, Any]:
        """Count an attempt's start; returns its starts and ends so far and the job's epoch and marker start."""
        pipe = self.redis.pipeline()
        pipe.hincrby(starts_key(job_id), str(index), 1)
        pipe.hget(ends_key(job_id), str(index))
        pipe.hmget(job_key(job_id), ["epoch", "marker_start"])
        pipe.hdel(queued_key(job_id), str(index))
        pipe.hdel(reserved_key(job_id), str(index))
        pipe.set(worker_key(worker), 1, ex=heartbeat_s)
        pipe.expire(starts_key(job_id), TTL_S)
        pipe.info("server")
        starts, ends, (job_epoch, marker_start), *_, info = pipe.execute()
        return {
            "starts": int(starts),
            "ends": int(ends or 0),
            "job_epoch": (job_epoch or b"").decode(),
            "epoch": str(info["run_id"]),
            "marker_start": int(marker_start or 0),
        }

    def end_attempt(self, job_id: str, index: int) -> None:
        """An attempt ended in Python (returned, raised, retried): it did not take its process down."""
        pipe = self.redis.pipeline()
        pipe.hincrby(ends_key(job_id), str(index), 1)
        pipe.expire(ends_key(job_id), TTL_S)
        pipe.execute()

    def take_lease(self, job_id: str, index: int, holder: dict[str, Any], ttl_s: int) -> bytes | None:
        """Make `holder` the chunk's running attempt; returns None, or the current holder's record if it has one."""
        raw = orjson.dumps(holder)
        if self.redis.set(lease_key(job_id, index), raw, nx=True, ex=ttl_s):
            return None
        current = self.redis.get(lease_key(job_id, index))
        if current is None:  # released in between
            return self.take_lease(job_id, index, holder, ttl_s)
        return current  # type: ignore[no-any-return]

    def replace_lease(self, job_id: str, index: int, was: bytes, holder: dict[str, Any], ttl_s: int) -> bool:
        """Take the lease from a holder known to be dead, unless someone else did first."""
        return bool(self._replace(keys=[lease_key(job_id, index)], args=[was, orjson.dumps(holder), ttl_s]))

    def renew_lease(self, job_id: str, index: int, holder: dict[str, Any], ttl_s: int) -> bool:
        """Keep `holder` the chunk's running attempt for `ttl_s` more seconds (taking the lease back if Redis
        lost it); False if another attempt holds it."""
        return bool(self._renew(keys=[lease_key(job_id, index)], args=[orjson.dumps(holder), ttl_s]))

    def release_lease(self, job_id: str, index: int, holder: dict[str, Any]) -> None:
        self._release(keys=[lease_key(job_id, index)], args=[orjson.dumps(holder)])

    def heartbeat(self, worker: str, ttl_s: int) -> None:
        """The worker is alive for `ttl_s` more seconds."""
        self.redis.set(worker_key(worker), 1, ex=ttl_s)

    def live_workers(self, names: Iterable[str]) -> set[str]:
        names = sorted(set(names))
        if not names:
            return set()
        beats = self.redis.mget([worker_key(n) for n in names])
        return {name for name, beat in zip(names, beats, strict=True) if beat is not None}

    def attempts(self, job_id: str, indexes: list[int]) -> dict[str, dict[int, Any]]:
        """Where the chunks' attempts are: queued (epoch), reserved (worker), running (lease record)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(queued_key(job_id))
        pipe.hgetall(reserved_key(job_id))
        pipe.mget([lease_key(job_id, i) for i in indexes] or ["k2:none"])
        queued, reserved, leases = pipe.execute()
        return {
            "queued": {int(k): v.decode() for k, v in queued.items()},
            "reserved": {int(k): v.decode() for k, v in reserved.items()},
            "running": {i: orjson.loads(raw) for i, raw in zip(indexes, leases, strict=False) if raw is not None},
        }

    def chunk_messages(self, limit: int) -> set[tuple[str, int]] | None:
        """(job id, task) of every chunk task message Redis holds: waiting in the queue, or delivered to a worker
        and not acknowledged (kombu keeps those in its unacked hash, and restores them if the worker dies).
        None when the queue holds more than `limit` messages: too many to read, and none of them is lost."""
        if self.redis.llen(CHUNK_QUEUE) > limit:
            return None
        pipe = self.redis.pipeline(transaction=False)
        pipe.lrange(CHUNK_QUEUE, 0, limit)
        pipe.hvals(UNACKED_KEY)
        waiting, delivered = pipe.execute()
        found: set[tuple[str, int]] = set()
        for payload in [*waiting, *(orjson.loads(entry)[0] for entry in delivered)]:
            message = orjson.loads(payload) if isinstance(payload, bytes) else payload
            try:
                if message["headers"].get("task") == "k2jobs.process_chunk":
                    args = orjson.loads(base64.b64decode(message["body"]))[0]
                    found.add((str(args[0]), int(args[1])))
            except (KeyError, IndexError, TypeError, ValueError, orjson.JSONDecodeError):
                continue  # not a message k2jobs sent: not one of its chunks
        return found

    def reset_attempts(self, job_id: str, indexes: list[int]) -> None:
        """Start the crash count and the supervisor's count again (resume). The starts stay: an attempt that
        follows an earlier one must still ask Kafka whether the chunk committed."""
        starts = self.redis.hmget(starts_key(job_id), [str(i) for i in indexes]) if indexes else []
        pipe = self.redis.pipeline()
        ended = {str(i): int(n) for i, n in zip(indexes, starts, strict=True) if n is not None}
        if ended:
            pipe.hset(ends_key(job_id), mapping=ended)
        pipe.hdel(job_key(job_id), "redrives")
        pipe.execute()
