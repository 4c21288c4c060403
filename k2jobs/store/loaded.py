"""What succeeded jobs published, kept for good: file contents (load-once) and how far each file was published
(its extent: appending)."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from k2jobs.errors import RedisUnavailable
from k2jobs.plan.extents import Extent, merged
from k2jobs.plan.model import JobPlan
from k2jobs.store.keys import EXTENTS_KEY, LOADED_KEY
from k2jobs.store.records import Records
from k2jobs.store.refusals import redis_failure

# Every file content a job published, once (the earliest job is kept): thousands of files in one round trip.
_REMEMBER_LOADED = """for i = 1, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end"""


class LoadedRecords(Records):
    """Load-once and extents."""

    SCRIPTS: dict[str, str] = {"_remember_loaded": _REMEMBER_LOADED}
    _remember_loaded: Any

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
