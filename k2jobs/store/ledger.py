"""Every Redis key k2jobs uses, and every write to them; each write is safe to repeat."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from typing import Any

import orjson
import redis

from k2jobs.errors import JobNotFound, RedisUnavailable
from k2jobs.plan.extents import Extent, merged
from k2jobs.plan.model import JobPlan
from k2jobs.plan.status import ChunkStatus
from k2jobs.store.refusals import redis_failure

TTL_S = 30 * 24 * 3600  # jobs are kept a month, then Redis forgets them
JOBS_KEY = "k2:jobs"
RUNNING_KEY = "k2:running"  # ids of jobs without a report: what the job supervisor watches
SUPERVISOR_KEY = "k2:supervisor"  # which worker's job supervisor acts now (a redis-py Lock)
LOADED_KEY = "k2:loaded"  # file content (FilePlan.content) -> the succeeded job that published it, kept for good
EXTENTS_KEY = "k2:extents"  # file path under the data root -> what succeeded jobs published of it (appends.Extent)
CHUNK_QUEUE = "k2jobs.chunks"  # celeryconfig routes k2jobs.process_chunk here; kombu keeps it as a Redis list
UNACKED_KEY = "unacked"  # kombu: messages delivered to a worker and not acknowledged yet (restored if it dies)


def _job(job_id: str) -> str:
    return f"k2:job:{job_id}"


def _plan(job_id: str) -> str:
    return f"k2:job:{job_id}:plan"


def _gzip_indexes(job_id: str) -> str:
    return f"k2:job:{job_id}:gzip-index"


def _results(job_id: str) -> str:
    return f"k2:job:{job_id}:results"  # chunk index -> final result JSON (committed or failed)


def _progress(job_id: str) -> str:
    return f"k2:job:{job_id}:progress"  # chunk index -> rows handled so far in the current attempt


def _report(job_id: str) -> str:
    return f"k2:job:{job_id}:report"


def _reported(job_id: str) -> str:
    return f"k2:job:{job_id}:reported"  # a list pushed to when the report is saved: wakes a waiting submit


# Where each chunk's attempts are (k2jobs.store.attempts reads them): queued in Redis, reserved by a worker, running.
def _queued(job_id: str) -> str:
    return f"k2:job:{job_id}:queued"  # chunk index -> Redis run_id when its message was sent


def _reserved(job_id: str) -> str:
    return f"k2:job:{job_id}:reserved"  # chunk index -> worker holding its message (prefetched, or a retry's wait)


def _starts(job_id: str) -> str:
    return f"k2:job:{job_id}:starts"  # chunk index -> attempts started


def _ends(job_id: str) -> str:
    return f"k2:job:{job_id}:ends"  # chunk index -> attempts that ended in Python (not with their process)


def _lease(job_id: str, index: int) -> str:
    return f"k2:lease:{job_id}:{index}"  # the attempt running the chunk: {worker, pid, token}


def _worker(name: str) -> str:
    return f"k2:worker:{name}"  # exists while the worker's main process beats


_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"""
_REPLACE = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) end return false"""
# The job's counters (chunks_done, rejected, rows_done in k2:job:<id>) move with every result and progress write,
# in the same script, so a waiting client reads three numbers instead of every chunk's result.
_PROGRESS_LUA = """local function progress(index, rows)
  local old = tonumber(redis.call('hget', KEYS[2], index) or '0')
  redis.call('hset', KEYS[2], index, rows)
  return tonumber(rows) - old
end
"""
_SET_PROGRESS = (
    _PROGRESS_LUA
    + """local delta = progress(ARGV[1], ARGV[2])
if delta ~= 0 then redis.call('hincrby', KEYS[3], 'rows_done', delta) end"""
)
# Every file content a job published, once (the earliest job is kept): thousands of files in one round trip.
_REMEMBER_LOADED = """for i = 1, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end"""
_RECORD = (
    _PROGRESS_LUA
    + """local done, rejected, rows = 0, 0, 0
for i = 1, #ARGV, 4 do
  local index, committed, value, result = ARGV[i], ARGV[i + 1] == '1', ARGV[i + 2], cjson.decode(ARGV[i + 2])
  local prev = redis.call('hget', KEYS[1], index)
  if not prev or committed then
    if prev then rejected = rejected - (cjson.decode(prev)['rejected'] or 0) else done = done + 1 end
    redis.call('hset', KEYS[1], index, value)
    rejected = rejected + (result['rejected'] or 0)
  end
  rows = rows + progress(index, ARGV[i + 3])
end
redis.call('hincrby', KEYS[3], 'chunks_done', done)
redis.call('hincrby', KEYS[3], 'rejected', rejected)
redis.call('hincrby', KEYS[3], 'rows_done', rows)"""
)
_CLEAR_FAILURES = """local done, rejected = 0, 0
for i = 1, #ARGV do
  local prev = redis.call('hget', KEYS[1], ARGV[i])
  if prev then
    local result = cjson.decode(prev)
    if result['status'] ~= 'committed' then
      redis.call('hdel', KEYS[1], ARGV[i])
      done, rejected = done - 1, rejected - (result['rejected'] or 0)
    end
  end
end
redis.call('hincrby', KEYS[2], 'chunks_done', done)
redis.call('hincrby', KEYS[2], 'rejected', rejected)"""
_RENEW = """local held = redis.call('get', KEYS[1])
if held == ARGV[1] or not held then redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end return 0"""


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A Redis client that fails within `timeout_s` instead of hanging."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s + 25)


def _loads(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)


class Ledger:
    """A job's plan, per-chunk results, progress and report, kept in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis: Any = client  # bytes replies (no decode_responses)
        self._release = client.register_script(_RELEASE)
        self._replace = client.register_script(_REPLACE)
        self._renew = client.register_script(_RENEW)
        self._set_progress = client.register_script(_SET_PROGRESS)
        self._record = client.register_script(_RECORD)
        self._clear_failures = client.register_script(_CLEAR_FAILURES)
        self._remember_loaded = client.register_script(_REMEMBER_LOADED)

    def ping(self) -> None:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise RedisUnavailable(redis_failure(exc)) from exc

    # -- jobs -------------------------------------------------------------------------------
    def epoch(self) -> str:
        """The Redis server's run id: it changes on every restart or failover, the only times Redis can lose
        writes it acknowledged (appendfsync everysec, an asynchronous replica)."""
        return str(self.redis.info("server")["run_id"])

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
        pipe.hset(_job(job_id), mapping=meta)  # type: ignore[arg-type]
        pipe.set(_plan(job_id), orjson.dumps(plan.to_dict()))
        if plan.gzip_indexes:
            pipe.hset(_gzip_indexes(job_id), mapping=plan.gzip_indexes)  # type: ignore[arg-type]
        pipe.zadd(JOBS_KEY, {job_id: now})
        pipe.sadd(RUNNING_KEY, job_id)
        for key in (_job(job_id), _plan(job_id), _gzip_indexes(job_id)):
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
        plan = JobPlan.from_dict(orjson.loads(raw))
        if any(c.compression for c in plan.chunks):
            stored = self.redis.hgetall(_gzip_indexes(job_id))
            plan.gzip_indexes.update({path.decode(): index for path, index in stored.items()})
        return plan

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
        """Record the file contents a succeeded job published (the earliest job is kept), and how far it published
        each file (its extent: a later job loads only what follows)."""
        loaded: list[Any] = []
        extents: dict[str, Any] = {}
        for file in plan.files:
            loaded += [file.content, orjson.dumps({"job_id": job_id, "path": file.path})]
            if file.identity and file.end:
                pieces = merged([(int(s), int(e), int(c)) for s, e, c in file.pieces])
                extents[file.identity] = Extent(file.end, file.next_line, file.newline, pieces, job_id).to_json()
        pipe = self.redis.pipeline()
        self._remember_loaded(keys=[LOADED_KEY], args=loaded, client=pipe)
        if extents:
            pipe.hset(EXTENTS_KEY, mapping=extents)
        pipe.execute()

    def file_extents(self, identities: list[str]) -> dict[str, Extent]:
        """What succeeded jobs published of these files (by path under the data root), for those they did."""
        if not identities:
            return {}
        try:
            found = self.redis.hmget(EXTENTS_KEY, identities)
        except redis.RedisError as exc:  # asked while planning, before anything else needs Redis
            raise RedisUnavailable(redis_failure(exc)) from exc
        return {name: Extent.from_json(raw) for name, raw in zip(identities, found, strict=True) if raw is not None}

    def recent_jobs(self, limit: int = 20) -> list[str]:
        return [j.decode() for j in self.redis.zrevrange(JOBS_KEY, 0, limit - 1)]

    def set_running(self, job_id: str) -> None:
        """Mark a job running again (resume), watched by the supervisor from now on."""
        pipe = self.redis.pipeline()
        pipe.hset(_job(job_id), "status", "running")
        pipe.sadd(RUNNING_KEY, job_id)
        pipe.execute()

    def running_jobs(self) -> list[str]:
        return sorted(j.decode() for j in self.redis.smembers(RUNNING_KEY))

    def supervisor_lock(self, ttl_s: float) -> Any:
        """The lock that lets one job supervisor act at a time (redis-py's Lock, with a time to live)."""
        return self.redis.lock(SUPERVISOR_KEY, timeout=ttl_s, blocking=False, thread_local=False)

    def count_redrive(self, job_id: str, chunks: int) -> int:
        """Count chunks enqueued again by the supervisor; returns how many there have been in all."""
        return int(self.redis.hincrby(_job(job_id), "redrives", chunks))

    # -- attempts ---------------------------------------------------------------------------
    def mark_queued(self, job_id: str, indexes: Iterable[int]) -> None:
        """These chunks' messages are (about to be) in the queue, under the current Redis epoch."""
        epoch = self.epoch()
        mapping = {str(i): epoch for i in indexes}
        if mapping:
            pipe = self.redis.pipeline()
            pipe.hset(_queued(job_id), mapping=mapping)
            pipe.expire(_queued(job_id), TTL_S)
            pipe.execute()

    def mark_reserved(self, job_id: str, index: int, worker: str) -> None:
        """A worker holds the chunk's message (prefetched, or waiting for a retry's countdown)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(_reserved(job_id), str(index), worker)
        pipe.expire(_reserved(job_id), TTL_S)
        pipe.execute()

    def start_attempt(self, job_id: str, index: int, worker: str, heartbeat_s: int) -> dict[str, Any]:
        """Count an attempt's start; returns its starts and ends so far and the job's epoch and marker start."""
        pipe = self.redis.pipeline()
        pipe.hincrby(_starts(job_id), str(index), 1)
        pipe.hget(_ends(job_id), str(index))
        pipe.hmget(_job(job_id), ["epoch", "marker_start"])
        pipe.hdel(_queued(job_id), str(index))
        pipe.hdel(_reserved(job_id), str(index))
        pipe.set(_worker(worker), 1, ex=heartbeat_s)
        pipe.expire(_starts(job_id), TTL_S)
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
        pipe.hincrby(_ends(job_id), str(index), 1)
        pipe.expire(_ends(job_id), TTL_S)
        pipe.execute()

    def take_lease(self, job_id: str, index: int, holder: dict[str, Any], ttl_s: int) -> bytes | None:
        """Make `holder` the chunk's running attempt; returns None, or the current holder's record if it has one."""
        raw = orjson.dumps(holder)
        if self.redis.set(_lease(job_id, index), raw, nx=True, ex=ttl_s):
            return None
        current = self.redis.get(_lease(job_id, index))
        if current is None:  # released in between
            return self.take_lease(job_id, index, holder, ttl_s)
        return current  # type: ignore[no-any-return]

    def replace_lease(self, job_id: str, index: int, was: bytes, holder: dict[str, Any], ttl_s: int) -> bool:
        """Take the lease from a holder known to be dead, unless someone else did first."""
        return bool(self._replace(keys=[_lease(job_id, index)], args=[was, orjson.dumps(holder), ttl_s]))

    def renew_lease(self, job_id: str, index: int, holder: dict[str, Any], ttl_s: int) -> bool:
        """Keep `holder` the chunk's running attempt for `ttl_s` more seconds (taking the lease back if Redis
        lost it); False if another attempt holds it."""
        return bool(self._renew(keys=[_lease(job_id, index)], args=[orjson.dumps(holder), ttl_s]))

    def release_lease(self, job_id: str, index: int, holder: dict[str, Any]) -> None:
        self._release(keys=[_lease(job_id, index)], args=[orjson.dumps(holder)])

    def heartbeat(self, worker: str, ttl_s: int) -> None:
        """The worker is alive for `ttl_s` more seconds."""
        self.redis.set(_worker(worker), 1, ex=ttl_s)

    def live_workers(self, names: Iterable[str]) -> set[str]:
        names = sorted(set(names))
        if not names:
            return set()
        beats = self.redis.mget([_worker(n) for n in names])
        return {name for name, beat in zip(names, beats, strict=True) if beat is not None}

    def attempts(self, job_id: str, indexes: list[int]) -> dict[str, dict[int, Any]]:
        """Where the chunks' attempts are: queued (epoch), reserved (worker), running (lease record)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(_queued(job_id))
        pipe.hgetall(_reserved(job_id))
        pipe.mget([_lease(job_id, i) for i in indexes] or ["k2:none"])
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
        starts = self.redis.hmget(_starts(job_id), [str(i) for i in indexes]) if indexes else []
        pipe = self.redis.pipeline()
        ended = {str(i): int(n) for i, n in zip(indexes, starts, strict=True) if n is not None}
        if ended:
            pipe.hset(_ends(job_id), mapping=ended)
        pipe.hdel(_job(job_id), "redrives")
        pipe.execute()

    # -- chunks -----------------------------------------------------------------------------
    def chunk_result(self, job_id: str, index: int) -> dict[str, Any] | None:
        """The final result of a chunk, if it has one."""
        return _loads(self.redis.hget(_results(job_id), str(index)))  # type: ignore[arg-type]

    def chunk_results(self, job_id: str, indexes: list[int]) -> list[dict[str, Any] | None]:
        """The final results of these chunks (None for a chunk without one)."""
        return [_loads(raw) for raw in self.redis.hmget(_results(job_id), [str(i) for i in indexes])]

    def record_results(self, job_id: str, results: list[dict[str, Any]]) -> None:
        """Store chunks' final results at once (a task's), and move the job's counters; a committed result is
        never replaced by a failure."""
        args: list[Any] = []
        for result in results:
            rows = result.get("published", 0) + result.get("rejected", 0)
            args += [str(result["chunk"]), int(result["status"] == ChunkStatus.COMMITTED), orjson.dumps(result), rows]
        keys = [_results(job_id), _progress(job_id), _job(job_id)]
        pipe = self.redis.pipeline()
        self._record(keys=keys, args=args, client=pipe)
        pipe.expire(_results(job_id), TTL_S)
        pipe.expire(_progress(job_id), TTL_S)
        pipe.execute()

    def record_result(self, job_id: str, index: int, result: dict[str, Any]) -> None:
        """Store a chunk's final result; a committed result is never replaced by a failure."""
        self.record_results(job_id, [{**result, "chunk": index}])

    def clear_failures(self, job_id: str, indexes: Iterable[int]) -> None:
        """Forget failed results so the chunks can run again (resume)."""
        self._clear_failures(keys=[_results(job_id), _job(job_id)], args=[str(i) for i in indexes])

    def results(self, job_id: str) -> dict[int, dict[str, Any]]:
        raw = self.redis.hgetall(_results(job_id))
        return {int(k): orjson.loads(v) for k, v in raw.items()}

    def set_progress(self, job_id: str, index: int, rows_done: int) -> None:
        """Rows a chunk has handled so far (what `status --wait` shows and watches)."""
        self._set_progress(keys=[_results(job_id), _progress(job_id), _job(job_id)], args=[str(index), rows_done])

    def progress(self, job_id: str) -> int:
        """Rows handled so far, added up from every chunk (the job's `rows_done` counter keeps the same sum)."""
        return sum(int(v) for v in self.redis.hvals(_progress(job_id)))

    def chunk_progress(self, job_id: str) -> dict[int, int]:
        """Rows handled so far by each chunk's current attempt."""
        return {int(k): int(v) for k, v in self.redis.hgetall(_progress(job_id)).items()}

    def note_test_event(self, name: str, value: str) -> None:
        """Where a test's fault hook stopped (k2:test:<name>), so the test can strike at that moment."""
        self.redis.set(f"k2:test:{name}", value, ex=600)

    def first_test_event(self, name: str) -> bool:
        """Whether this is the first time a test's fault hook reached `name` (k2:test:<name>), of all processes."""
        return bool(self.redis.set(f"k2:test:{name}", "1", ex=600, nx=True))

    # -- reports ----------------------------------------------------------------------------
    def save_report(self, job_id: str, report: dict[str, Any]) -> dict[str, Any]:
        """Save the job's report unless it has one (a report is final until `resume`); returns the saved one."""
        if not self.redis.set(_report(job_id), orjson.dumps(report), ex=TTL_S, nx=True):
            return self.report(job_id) or report
        pipe = self.redis.pipeline()
        pipe.hset(_job(job_id), "status", report["status"])
        pipe.srem(RUNNING_KEY, job_id)
        pipe.rpush(_reported(job_id), 1)
        pipe.expire(_reported(job_id), 60)
        pipe.execute()
        return report

    def wait_for_report_signal(self, job_id: str, timeout_s: float) -> None:
        """Return as soon as a report is saved for the job (by anyone), or after `timeout_s`."""
        self.redis.blpop([_reported(job_id)], timeout=timeout_s)

    def report(self, job_id: str) -> dict[str, Any] | None:
        return _loads(self.redis.get(_report(job_id)))  # type: ignore[arg-type]

    def clear_report(self, job_id: str) -> None:
        self.redis.delete(_report(job_id), _reported(job_id))
