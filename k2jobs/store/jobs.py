"""A job's record in Redis: its meta and counters, its plan (and gzip indexes), the running set, its report."""

from __future__ import annotations

import time
from typing import Any

import orjson

from k2jobs.errors import JobNotFound
from k2jobs.plan.model import JobPlan, TaskPlan
from k2jobs.store.keys import (
    JOBS_KEY,
    RUNNING_KEY,
    SUPERVISOR_KEY,
    TTL_S,
    gzip_indexes_key,
    job_key,
    plan_key,
    report_key,
    reported_key,
    tasks_key,
)
from k2jobs.store.records import Records, loads

TASK_RECORDS_PER_WRITE = 5_000  # task records sent in one HSET: a job of a million files is not one huge command


class JobRecords(Records):
    """Jobs: created by submit, watched while running, ended by their report."""

    def create_job(self, job_id: str, plan: JobPlan, options: dict[str, Any], marker_start: int = 0) -> None:
        """Record a new job and its plan before any chunk is enqueued.

        `marker_start`: the marker partition's end before the job began, where the committed check starts.
        """
        now = time.time()
        meta = {
            "epoch": self.epoch(),
            "marker_start": marker_start,
            "job_id": job_id,
            "status": "running",
            "created": now,
            "source_dir": plan.source_dir,
            "rows": plan.rows,
            "chunks": len(plan.chunks),
            "files": len(plan.files),
            "options": orjson.dumps(options),
            "chunks_done": 0,
            "rejected": 0,
            "rows_done": 0,
        }
        pipe = self.redis.pipeline()
        pipe.hset(job_key(job_id), mapping=meta)  # type: ignore[arg-type]
        pipe.set(plan_key(job_id), orjson.dumps(plan.head()))
        tasks = plan.task_plans()
        for start in range(0, len(tasks), TASK_RECORDS_PER_WRITE):
            records = {str(t.index): orjson.dumps(t.to_record()) for t in tasks[start : start + TASK_RECORDS_PER_WRITE]}
            pipe.hset(tasks_key(job_id), mapping=records)  # type: ignore[arg-type]
        if plan.gzip_indexes:
            pipe.hset(gzip_indexes_key(job_id), mapping=plan.gzip_indexes)  # type: ignore[arg-type]
        pipe.zadd(JOBS_KEY, {job_id: now})
        pipe.sadd(RUNNING_KEY, job_id)
        for key in (job_key(job_id), plan_key(job_id), tasks_key(job_id), gzip_indexes_key(job_id)):
            pipe.expire(key, TTL_S)
        pipe.execute()

    def set_submit_timings(self, job_id: str, plan_s: float, enqueue_s: float) -> None:
        """How long submit took to plan (read, cut, count, checksum) and then to check, record and enqueue."""
        self.redis.hset(job_key(job_id), mapping={"plan_s": round(plan_s, 3), "enqueue_s": round(enqueue_s, 3)})

    def job_meta(self, job_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(job_key(job_id))
        if not raw:
            raise JobNotFound(f"no job {job_id!r} in Redis")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def plan(self, job_id: str) -> JobPlan:
        """The whole plan: its head and every task record (what the job as a whole is reconciled against)."""
        pipe = self.redis.pipeline()
        pipe.get(plan_key(job_id))
        pipe.hvals(tasks_key(job_id))
        head, records = pipe.execute()
        if head is None:
            raise JobNotFound(f"no job {job_id!r} in Redis")
        plan = JobPlan.from_stored(orjson.loads(head), [orjson.loads(r) for r in records])
        if any(c.compression for c in plan.chunks):
            stored = self.redis.hgetall(gzip_indexes_key(job_id))
            plan.gzip_indexes.update({path.decode(): index for path, index in stored.items()})
        return plan

    def task_plans(self, job_id: str, tasks: list[int]) -> list[TaskPlan | None]:
        """The records of these tasks (each named by its first chunk), one read; None for an index that names
        no task (a chunk inside one, or a job Redis does not hold)."""
        raw = self.redis.hmget(tasks_key(job_id), [str(t) for t in tasks])
        return [None if r is None else TaskPlan.from_record(orjson.loads(r)) for r in raw]

    def gzip_indexes(self, job_id: str, data_paths: list[str]) -> dict[str, bytes]:
        """The gzip indexes of these .csv.gz files (by data path) that the job holds."""
        if not data_paths:
            return {}
        raw = self.redis.hmget(gzip_indexes_key(job_id), data_paths)
        return {path: index for path, index in zip(data_paths, raw, strict=True) if index is not None}

    def job_options(self, job_id: str) -> dict[str, Any]:
        """The options a job was submitted with (chunk rows, order, ...)."""
        return orjson.loads(self.job_meta(job_id).get("options", "{}"))  # type: ignore[no-any-return]

    def recent_jobs(self, limit: int = 20) -> list[str]:
        return [j.decode() for j in self.redis.zrevrange(JOBS_KEY, 0, limit - 1)]

    def set_running(self, job_id: str) -> None:
        """Mark a job running again (resume), watched by the supervisor from now on."""
        pipe = self.redis.pipeline()
        pipe.hset(job_key(job_id), "status", "running")
        pipe.sadd(RUNNING_KEY, job_id)
        pipe.execute()

    def running_jobs(self) -> list[str]:
        return sorted(j.decode() for j in self.redis.smembers(RUNNING_KEY))

    def supervisor_lock(self, ttl_s: float) -> Any:
        """The lock that lets one job supervisor act at a time (redis-py's Lock, with a time to live)."""
        return self.redis.lock(SUPERVISOR_KEY, timeout=ttl_s, blocking=False, thread_local=False)

    def count_redrive(self, job_id: str, chunks: int) -> int:
        """Count chunks enqueued again by the supervisor; returns how many there have been in all."""
        return int(self.redis.hincrby(job_key(job_id), "redrives", chunks))

    def save_report(self, job_id: str, report: dict[str, Any]) -> dict[str, Any]:
        """Save the job's report unless it has one (a report is final until `resume`); returns the saved one."""
        if not self.redis.set(report_key(job_id), orjson.dumps(report), ex=TTL_S, nx=True):
            return self.report(job_id) or report
        pipe = self.redis.pipeline()
        pipe.hset(job_key(job_id), "status", report["status"])
        pipe.srem(RUNNING_KEY, job_id)
        pipe.rpush(reported_key(job_id), 1)
        pipe.expire(reported_key(job_id), 60)
        pipe.execute()
        return report

    def wait_for_report_signal(self, job_id: str, timeout_s: float) -> None:
        """Return as soon as a report is saved for the job (by anyone), or after `timeout_s`."""
        self.redis.blpop([reported_key(job_id)], timeout=timeout_s)

    def report(self, job_id: str) -> dict[str, Any] | None:
        return loads(self.redis.get(report_key(job_id)))  # type: ignore[arg-type]

    def clear_report(self, job_id: str) -> None:
        self.redis.delete(report_key(job_id), reported_key(job_id))
