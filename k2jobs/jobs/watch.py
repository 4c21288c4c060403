"""`watch DIR`: load new files and appended lines as they arrive, one job at a time, until stopped.

Every `every_s` seconds the watcher plans the directory against what succeeded jobs published of each file
(k2jobs/appends.py): new files load whole, grown files load the lines that follow, unchanged files cost
nothing, and a file whose published part changed is reported (once) and left alone. When there is something
new it submits one job and waits for its report before it looks again, so two of its jobs never load one file
at once. A job that fails holds its files back (loading them again would publish again what it committed)
until `resume` makes it succeed. The watcher keeps its state in Redis: a watcher started again first waits
for the job the last one left running, and a lock keeps a second watcher off the same directory.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from redis import RedisError

from k2jobs.config import Settings
from k2jobs.errors import InputError, KafkaUnavailable, RedisUnavailable, RegistryUnavailable, WaitTimeout
from k2jobs.jobs.submit import SubmitOptions, plan_input, submit_plan
from k2jobs.jobs.waiting import wait_for_report
from k2jobs.store.ledger import Ledger

AWAY = (RedisUnavailable, KafkaUnavailable, RegistryUnavailable, RedisError, ConnectionError)
LOCK_TTL_S = 30  # renewed every WAIT_SLICE_S while the watcher lives; one killed -9 frees it after this long
WAIT_SLICE_S = 0.5  # how often waiting looks whether the watcher was told to stop
Say = Callable[[dict[str, Any]], None]


class Watcher:
    """One directory, watched until `stop` is set."""

    def __init__(
        self, settings: Settings, ledger: Ledger, directory: Path | str, options: SubmitOptions, say: Say
    ) -> None:
        """`directory`: a folder under the data root, or s3://BUCKET/PREFIX."""
        self.settings, self.ledger, self.directory, self.say = settings, ledger, directory, say
        if isinstance(directory, str):
            self.name = directory.rstrip("/")
        else:
            self.name = directory.resolve().relative_to(settings.data_root.resolve()).as_posix() or "."
        self.options = replace(options, complete_only=True, made_by=f"watch {self.name}")
        self.stop = threading.Event()
        self._lock: Any = None
        self._reported: set[str] = set()  # changes already reported, said once each

    def _key(self, what: str) -> str:
        return f"k2:watch:{self.name}:{what}"

    def run(self, every_s: float) -> None:
        """Scan every `every_s` seconds until stopped; services briefly away are waited for, not fatal."""
        self._lock = self.ledger.redis.lock(self._key("lock"), timeout=LOCK_TTL_S, thread_local=False)
        if not self._lock.acquire(blocking=False):
            self.say({"event": "waiting", "reason": f"another watcher holds {self.name}; waiting for it to stop"})
            while not self._lock.acquire(blocking=True, blocking_timeout=WAIT_SLICE_S):
                if self.stop.is_set():
                    return
        try:
            self.say({"event": "watching", "directory": self.name, "every_s": every_s})
            while not self.stop.is_set():
                try:
                    self.scan_once()
                except AWAY as exc:
                    self.say({"event": "waiting", "reason": f"{exc}; trying again in {every_s:g}s"})
                except InputError as exc:
                    self.say({"event": "refused", "reason": str(exc)})
                self._pause(every_s)
        finally:
            with contextlib.suppress(Exception):  # expired, or Redis away: the lock ends by itself
                self._lock.release()

    def scan_once(self) -> str | None:
        """Wait for the job the last scan made while it runs; then scan once and submit a job for what is new,
        and wait for it. The new job's id, if there was anything new (and the watcher was not stopped)."""
        last = self.ledger.redis.get(self._key("job"))
        if last is not None and self._wait(last.decode()) is None:
            return None  # stopped while waiting: the job goes on on the workers
        job_id = self._submit_new()
        if job_id is not None:
            self._wait(job_id)
        return job_id

    def scan_scheduled(self) -> dict[str, Any]:
        """One scan for Celery beat (the k2jobs.scan_directory task): never two at once on one directory (the
        watcher's lock), nothing while the last scan's job runs, and no waiting for the job it submits."""
        self.ledger.redis.incr(self._key("scans"))  # every scan task run, whether it gets the lock or not
        self._lock = self.ledger.redis.lock(self._key("lock"), timeout=LOCK_TTL_S, thread_local=False)
        if not self._lock.acquire(blocking=False):
            return {"scan": "skipped", "reason": f"another scan or watcher holds {self.name}"}
        try:
            last = self.ledger.redis.get(self._key("job"))
            if last is not None:
                report = self.ledger.report(last.decode())
                if report is None:
                    return {"scan": "skipped", "reason": f"job {last.decode()} of the last scan is still running"}
                self._settle(report)
            job_id = self._submit_new()
            return {"scan": "submitted", "job_id": job_id} if job_id else {"scan": "nothing new"}
        finally:
            with contextlib.suppress(Exception):
                self._lock.release()

    def _submit_new(self) -> str | None:
        """Plan against what was published and submit a job for what is new; its id, or None."""
        self._release_held()
        options = replace(self.options, exclude=frozenset(self._held()))
        plan = plan_input(self.settings, self.ledger, self.directory, options)
        for change in plan.changed:
            if change not in self._reported:
                self._reported.add(change)
                self.say({"event": "changed", "reason": change})
        if not plan.chunks:
            return None
        job_id = submit_plan(self.settings, self.ledger, plan, options, time.perf_counter())
        self.ledger.redis.set(self._key("job"), job_id)
        return job_id

    def _wait(self, job_id: str) -> dict[str, Any] | None:
        """The job's report once it has one (said as one line; a failed job holds its files back), or None if the
        watcher was stopped first."""
        while not self.stop.is_set():
            self._renew()
            try:
                report = wait_for_report(self.ledger, job_id, timeout_s=WAIT_SLICE_S)
            except WaitTimeout:
                continue
            self._settle(report)
            return report
        return None

    def _settle(self, report: dict[str, Any]) -> None:
        """Say a finished job once, whichever watcher or scan sees it first."""
        if self.ledger.redis.getset(self._key("said"), report["job_id"]) != report["job_id"].encode():
            self._said(report)

    def _said(self, report: dict[str, Any]) -> None:
        totals = report["totals"]
        line = {"event": "job", "job_id": report["job_id"], "status": report["status"], **totals}
        line["duration_s"] = report["duration_s"]
        if report.get("warnings"):
            line["warnings"] = report["warnings"]
        if report["status"] != "succeeded":
            plan = self.ledger.plan(report["job_id"])
            held = {f.identity: report["job_id"] for f in plan.files if f.identity}
            if held:
                self.ledger.redis.hset(self._key("held"), mapping=held)  # type: ignore[arg-type]
            line["held"] = sorted(f.path for f in plan.files)
            line["reason"] = f"its files wait until `python -m k2jobs resume {report['job_id']}` succeeds"
        self.say(line)

    def _held(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.ledger.redis.hgetall(self._key("held")).items()}

    def _release_held(self) -> None:
        """Files whose failed job has since succeeded (resumed) are watched again."""
        for identity, job_id in self._held().items():
            report = self.ledger.report(job_id)
            if report is not None and report["status"] == "succeeded":
                self.ledger.redis.hdel(self._key("held"), identity)

    def _renew(self) -> None:
        if self._lock is not None:
            self._lock.reacquire()

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.stop.wait(min(WAIT_SLICE_S, max(0.0, deadline - time.monotonic())))
            with contextlib.suppress(Exception):  # Redis away: the next scan says so
                self._renew()
