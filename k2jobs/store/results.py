"""Chunks' final results and progress in Redis, and the job counters that move with them in the same script."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from k2jobs.plan.status import ChunkStatus
from k2jobs.store.keys import TTL_S, job_key, progress_key, results_key
from k2jobs.store.records import Records, loads

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


class ResultRecords(Records):
    """Chunks' results and progress."""

    SCRIPTS: dict[str, str] = {"_set_progress": _SET_PROGRESS, "_record": _RECORD, "_clear_failures": _CLEAR_FAILURES}
    _set_progress: Any
    _record: Any
    _clear_failures: Any

    def chunk_result(self, job_id: str, index: int) -> dict[str, Any] | None:
        """The final result of a chunk, if it has one."""
        return loads(self.redis.hget(results_key(job_id), str(index)))  # type: ignore[arg-type]

    def chunk_results(self, job_id: str, indexes: list[int]) -> list[dict[str, Any] | None]:
        """The final results of these chunks (None for a chunk without one)."""
        return [loads(raw) for raw in self.redis.hmget(results_key(job_id), [str(i) for i in indexes])]

    def record_results(self, job_id: str, results: list[dict[str, Any]]) -> None:
        """Store chunks' final results at once (a task's), and move the job's counters; a committed result is
        never replaced by a failure."""
        args: list[Any] = []
        for result in results:
            rows = result.get("published", 0) + result.get("rejected", 0)
            args += [str(result["chunk"]), int(result["status"] == ChunkStatus.COMMITTED), orjson.dumps(result), rows]
        keys = [results_key(job_id), progress_key(job_id), job_key(job_id)]
        pipe = self.redis.pipeline()
        self._record(keys=keys, args=args, client=pipe)
        pipe.expire(results_key(job_id), TTL_S)
        pipe.expire(progress_key(job_id), TTL_S)
        pipe.execute()

    def record_result(self, job_id: str, index: int, result: dict[str, Any]) -> None:
        """Store a chunk's final result; a committed result is never replaced by a failure."""
        self.record_results(job_id, [{**result, "chunk": index}])

    def clear_failures(self, job_id: str, indexes: Iterable[int]) -> None:
        """Forget failed results so the chunks can run again (resume)."""
        self._clear_failures(keys=[results_key(job_id), job_key(job_id)], args=[str(i) for i in indexes])

    def results(self, job_id: str) -> dict[int, dict[str, Any]]:
        raw = self.redis.hgetall(results_key(job_id))
        return {int(k): orjson.loads(v) for k, v in raw.items()}

    def set_progress(self, job_id: str, index: int, rows_done: int) -> None:
        """Rows a chunk has handled so far (what `status --wait` shows and watches)."""
        self._set_progress(
            keys=[results_key(job_id), progress_key(job_id), job_key(job_id)], args=[str(index), rows_done]
        )

    def progress(self, job_id: str) -> int:
        """Rows handled so far, added up from every chunk (the job's `rows_done` counter keeps the same sum)."""
        return sum(int(v) for v in self.redis.hvals(progress_key(job_id)))

    def chunk_progress(self, job_id: str) -> dict[int, int]:
        """Rows handled so far by each chunk's current attempt."""
        return {int(k): int(v) for k, v in self.redis.hgetall(progress_key(job_id)).items()}
