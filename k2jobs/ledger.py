"""Every Redis key k2jobs uses, and every write to them; each write is safe to repeat."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
import redis

from .errors import JobNotFound, RedisUnavailable
from .planning import JobPlan

TTL_S = 30 * 24 * 3600  # jobs are kept a month, then Redis forgets them
JOBS_KEY = "k2:jobs"
RUNNING_KEY = "k2:running"  # ids of jobs without a report: what the job supervisor watches
SUPERVISOR_KEY = "k2:supervisor"  # which worker's job supervisor acts now (a lock with a time to live)
LOADED_KEY = "k2:loaded"  # file content (FilePlan.content) -> the succeeded job that published it, kept for good
COMMITTED, FAILED = "committed", "failed"


def _job(job_id: str) -> str:
    return f"k2:job:{job_id}"


def _plan(job_id: str) -> str:
    return f"k2:job:{job_id}:plan"


def _results(job_id: str) -> str:
    return f"k2:job:{job_id}:results"  # chunk index -> final result JSON (committed or failed)


def _progress(job_id: str) -> str:
    return f"k2:job:{job_id}:progress"  # chunk index -> rows handled so far in the current attempt


def _report(job_id: str) -> str:
    return f"k2:job:{job_id}:report"


def _reported(job_id: str) -> str:
    return f"k2:job:{job_id}:reported"  # a list pushed to when the report is saved: wakes a waiting submit


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A Redis client that fails within `timeout_s` instead of hanging."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s + 25)


def _loads(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)


class Ledger:
    """A job's plan, per-chunk results, progress and report, kept in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis: Any = client  # bytes replies (no decode_responses)

    def ping(self) -> None:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise RedisUnavailable(f"Redis did not answer: {exc}") from exc

    # -- jobs -------------------------------------------------------------------------------
    def create_job(self, job_id: str, plan: JobPlan, options: dict[str, Any]) -> None:
        """Record a new job and its plan before any chunk is enqueued."""
        now = time.time()
        meta = {
            "job_id": job_id,
            "status": "running",
            "created": now,
            "source_dir": plan.source_dir,
            "rows": plan.rows,
            "chunks": len(plan.chunks),
            "files": len(plan.files),
            "options": orjson.dumps(options),
        }
        pipe = self.redis.pipeline()
        pipe.hset(_job(job_id), mapping=meta)  # type: ignore[arg-type]
        pipe.set(_plan(job_id), orjson.dumps(plan.to_dict()))
        pipe.zadd(JOBS_KEY, {job_id: now})
        pipe.sadd(RUNNING_KEY, job_id)
        pipe.hset(_job(job_id), "touched", now)
        for key in (_job(job_id), _plan(job_id)):
            pipe.expire(key, TTL_S)
        pipe.execute()

    def set_submit_timings(self, job_id: str, plan_s: float, enqueue_s: float) -> None:
        """How long submit took to plan (read, cut, count, checksum) and then to check, record and enqueue."""
        self.redis.hset(_job(job_id), mapping={"plan_s": round(plan_s, 3), "enqueue_s": round(enqueue_s, 3)})

    def job_meta(self, job_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(_job(job_id))
        if not raw:
            raise JobNotFound(f"no job {job_id!r} in Redis")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def plan(self, job_id: str) -> JobPlan:
        raw = self.redis.get(_plan(job_id))
        if raw is None:
            raise JobNotFound(f"no job {job_id!r} in Redis")
        return JobPlan.from_dict(orjson.loads(raw))

    def job_options(self, job_id: str) -> dict[str, Any]:
        """The options a job was submitted with (chunk rows, order, ...)."""
        return orjson.loads(self.job_meta(job_id).get("options", "{}"))  # type: ignore[no-any-return]

    def loaded_contents(self, contents: list[str]) -> dict[str, dict[str, str]]:
        """Which of these file contents a succeeded job published: content -> {job_id, path}."""
        if not contents:
            return {}
        found = self.redis.hmget(LOADED_KEY, contents)
        return {content: orjson.loads(raw) for content, raw in zip(contents, found, strict=True) if raw is not None}

    def remember_loaded(self, job_id: str, plan: JobPlan) -> None:
        """Record the file contents a succeeded job published (the earliest job is kept)."""
        for file in plan.files:
            self.redis.hsetnx(LOADED_KEY, file.content, orjson.dumps({"job_id": job_id, "path": file.path}))

    def recent_jobs(self, limit: int = 20) -> list[str]:
        return [j.decode() for j in self.redis.zrevrange(JOBS_KEY, 0, limit - 1)]

    def set_running(self, job_id: str) -> None:
        """Mark a job running again (resume), watched by the supervisor from now on."""
        pipe = self.redis.pipeline()
        pipe.hset(_job(job_id), mapping={"status": "running", "touched": time.time()})
        pipe.sadd(RUNNING_KEY, job_id)
        pipe.execute()

    def running_jobs(self) -> list[str]:
        return sorted(j.decode() for j in self.redis.smembers(RUNNING_KEY))

    def idle_s(self, job_id: str) -> float:
        """Seconds since any chunk of the job last moved (progress or result), or since it was (re)started."""
        touched = self.redis.hget(_job(job_id), "touched")
        return 0.0 if touched is None else time.time() - float(touched)

    def hold_supervisor_lock(self, token: str, ttl_s: int) -> bool:
        """Take or keep the supervisor lock for `ttl_s`; False while another supervisor holds it."""
        if self.redis.set(SUPERVISOR_KEY, token, nx=True, ex=ttl_s):
            return True
        if self.redis.get(SUPERVISOR_KEY) == token.encode():
            self.redis.expire(SUPERVISOR_KEY, ttl_s)
            return True
        return False

    def count_redrive(self, job_id: str) -> int:
        """Count one more re-drive of a stalled job; returns how many there have been."""
        pipe = self.redis.pipeline()
        pipe.hincrby(_job(job_id), "redrives", 1)
        pipe.hset(_job(job_id), "touched", time.time())
        return int(pipe.execute()[0])

    # -- chunks -----------------------------------------------------------------------------
    def chunk_result(self, job_id: str, index: int) -> dict[str, Any] | None:
        """The final result of a chunk, if it has one."""
        return _loads(self.redis.hget(_results(job_id), str(index)))  # type: ignore[arg-type]

    def record_result(self, job_id: str, index: int, result: dict[str, Any]) -> None:
        """Store a chunk's final result; a committed result is never replaced by a failure."""
        key = _results(job_id)
        if result["status"] != COMMITTED:
            self.redis.hsetnx(key, str(index), orjson.dumps(result))
        else:
            self.redis.hset(key, str(index), orjson.dumps(result))
        self.set_progress(job_id, index, result.get("published", 0) + result.get("rejected", 0))
        for k in (key, _progress(job_id)):
            self.redis.expire(k, TTL_S)

    def clear_failures(self, job_id: str, indexes: Iterable[int]) -> None:
        """Forget failed results so the chunks can run again (resume)."""
        key = _results(job_id)
        for index in indexes:
            current = self.chunk_result(job_id, index)
            if current is not None and current["status"] != COMMITTED:
                self.redis.hdel(key, str(index))

    def results(self, job_id: str) -> dict[int, dict[str, Any]]:
        raw = self.redis.hgetall(_results(job_id))
        return {int(k): orjson.loads(v) for k, v in raw.items()}

    def set_progress(self, job_id: str, index: int, rows_done: int) -> None:
        """Rows a chunk has handled so far; also marks the job as moving."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(_progress(job_id), str(index), rows_done)
        pipe.hset(_job(job_id), "touched", time.time())
        pipe.execute()

    def progress(self, job_id: str) -> int:
        return sum(int(v) for v in self.redis.hvals(_progress(job_id)))

    def chunk_progress(self, job_id: str) -> dict[int, int]:
        """Rows handled so far by each chunk's current attempt."""
        return {int(k): int(v) for k, v in self.redis.hgetall(_progress(job_id)).items()}

    # -- reports ----------------------------------------------------------------------------
    def save_report(self, job_id: str, report: dict[str, Any]) -> None:
        pipe = self.redis.pipeline()
        pipe.set(_report(job_id), orjson.dumps(report), ex=TTL_S)
        pipe.hset(_job(job_id), "status", report["status"])
        pipe.srem(RUNNING_KEY, job_id)
        pipe.rpush(_reported(job_id), 1)
        pipe.expire(_reported(job_id), 60)
        pipe.execute()

    def wait_for_report_signal(self, job_id: str, timeout_s: float) -> None:
        """Return as soon as a report is saved for the job (by anyone), or after `timeout_s`."""
        self.redis.blpop([_reported(job_id)], timeout=timeout_s)

    def report(self, job_id: str) -> dict[str, Any] | None:
        return _loads(self.redis.get(_report(job_id)))  # type: ignore[arg-type]

    def clear_report(self, job_id: str) -> None:
        self.redis.delete(_report(job_id), _reported(job_id))
