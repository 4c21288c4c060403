"""New data as it arrives, on the real stack: appended lines load once with their line numbers, `watch` makes
one job per scan with something new, survives being killed, and stops cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .conftest import DATA_ROOT, run_k2
from .reference import key_order_violations

pytestmark = pytest.mark.integration
TRADE = "03/10/2014,10:05:44.516,37.51,{volume},3,X,\r\n"
QUOTE = "03/10/2014,10:05:44.516,37.50,37.52,{volume},100\r\n"


RUN = uuid.uuid4().int % 999 + 1  # content no earlier run had: load-once compares content across runs


def rows(template: str, first: int, last: int) -> bytes:
    return "".join(template.format(volume=RUN * 10**7 + n) for n in range(first, last + 1)).encode()


def new_input(workdir: Path) -> Path:
    """A fresh input directory: a new path each run, as what jobs published of a path stays in Redis."""
    workdir = workdir / f"in-{uuid.uuid4().hex[:8]}"
    (workdir / "reference-data").mkdir(parents=True)
    (workdir / "reference-data" / "company_info.csv").write_text("company_id,symbol\n7078,BHP\n7181,CBA\n")
    (workdir / "trades").mkdir()
    (workdir / "quotes").mkdir()
    return workdir


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def sources_of(read_back, job_ids: list[str]) -> list:  # type: ignore[no-untyped-def,type-arg]
    return [m for job_id in job_ids for m in read_back(job_id)]


def assert_each_line_once_in_order(messages: list, expected: dict[str, int]) -> None:  # type: ignore[type-arg]
    """Every line 1..n of each file exactly once, and each key's messages in file order."""
    counts = Counter(m.source for m in messages)
    assert max(counts.values()) == 1, [s for s, n in counts.items() if n > 1][:5]
    assert set(counts) == {f"{path}:{n}" for path, last in expected.items() for n in range(1, last + 1)}
    assert key_order_violations(messages) == []


def test_appended_pieces_load_once_and_an_edited_published_part_is_refused(stack, workdir, read_back) -> None:  # type: ignore[no-untyped-def]
    job = new_input(workdir)
    path = job / "trades" / "7078.csv"
    relative = str(job.relative_to(DATA_ROOT))
    jobs = []
    for first, last in [(1, 30), (31, 45), (46, 46)]:
        append(path, rows(TRADE, first, last))
        done = run_k2("submit", relative, "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["status"] == "succeeded" and report["totals"]["published"] == last - first + 1
        jobs.append(report["job_id"])
    append(path, rows(TRADE, 47, 47)[:12])  # an append that is not a whole line yet
    nothing = run_k2("submit", relative, "--json")
    assert nothing.returncode == 2 and "nothing new" in nothing.stderr and jobs[-1] in nothing.stderr
    assert_each_line_once_in_order(sources_of(read_back, jobs), {"trades/7078.csv": 46})

    data = bytearray(path.read_bytes())
    data[5:6] = b"1"  # the month of line 1: a published byte
    path.write_bytes(bytes(data) + rows(TRADE, 47, 47)[12:])
    refused = run_k2("submit", relative, "--json")
    assert refused.returncode == 2 and refused.stdout == ""
    assert "trades/7078.csv: bytes 0-" in refused.stderr and "changed since job" in refused.stderr
    assert "--again" in refused.stderr


class Watch:
    """`python -m k2jobs watch DIR --json` in the background, its JSON lines collected as they come."""

    def __init__(self, relative: str, every: float = 0.3, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "k2jobs", "watch", relative, "--every", str(every), "--json"],
            cwd=DATA_ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for text in self.process.stdout:
            self.lines.put(json.loads(text))

    def next(self, event: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                ended = self.process.poll() is not None
                said = self.process.stderr.read() if ended and self.process.stderr else "(still running)"
                raise AssertionError(f"no {event!r} line from the watcher; its stderr: {said}") from None
            if line["event"] == event:
                return line

    def quiet_for(self, seconds: float) -> list[dict[str, Any]]:
        """What it said in `seconds`."""
        said = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                said.append(self.lines.get(timeout=0.1))
        return said


def test_watch_loads_appends_and_new_files_once_and_stops_on_sigint(stack, workdir, read_back, ledger) -> None:  # type: ignore[no-untyped-def]
    job = new_input(workdir)
    trades = job / "trades" / "7078.csv"
    append(trades, rows(TRADE, 1, 20))
    watch = Watch(str(job.relative_to(DATA_ROOT)))
    try:
        watch.next("watching")
        jobs = [watch.next("job")]
        append(trades, rows(TRADE, 21, 35))
        jobs.append(watch.next("job"))
        append(trades, rows(TRADE, 36, 36) + rows(TRADE, 37, 37)[:9])  # the last line unfinished
        jobs.append(watch.next("job"))
        (job / "quotes" / "7181.csv").write_bytes(rows(QUOTE, 1, 8))  # a new file of another kind
        jobs.append(watch.next("job"))
        os.utime(trades)  # touched, not changed: no job
        assert [line for line in watch.quiet_for(2) if line["event"] == "job"] == []
        append(trades, rows(TRADE, 37, 37)[9:])  # the unfinished line ends
        jobs.append(watch.next("job"))
        assert [j["status"] for j in jobs] == ["succeeded"] * 5
        assert [j["published"] for j in jobs] == [20, 15, 1, 8, 1]
        made_by = {ledger.job_options(j["job_id"])["made_by"] for j in jobs}
        assert made_by == {f"watch {job.relative_to(DATA_ROOT).as_posix()}"}
        listed = run_k2("jobs", "--limit", "50")
        assert f"{jobs[-1]['job_id']}  succeeded" in listed.stdout and "(watch " in listed.stdout

        started = time.monotonic()
        watch.process.send_signal(signal.SIGINT)
        assert watch.process.wait(timeout=10) == 130
        assert time.monotonic() - started < 10
    finally:
        watch.process.kill()
    messages = sources_of(read_back, [j["job_id"] for j in jobs])
    assert_each_line_once_in_order(messages, {"trades/7078.csv": 37, "quotes/7181.csv": 8})


@pytest.mark.fault
def test_a_watcher_killed_mid_job_and_started_again_loses_and_doubles_nothing(stack, workdir, read_back) -> None:  # type: ignore[no-untyped-def]
    job = new_input(workdir)
    trades = job / "trades" / "7078.csv"
    relative = str(job.relative_to(DATA_ROOT))
    append(trades, rows(TRADE, 1, 300_000))  # big enough that the watcher is killed while its job runs
    first = Watch(relative)
    try:
        first.next("watching")
        time.sleep(1.0)
    finally:
        first.process.kill()  # -9: no cleanup, the job goes on on the workers
        first.process.wait()
    said = [line for line in first.quiet_for(0.5) if line["event"] == "job"]  # if its job ended before the kill
    append(trades, rows(TRADE, 300_001, 300_010))
    second = Watch(relative)
    try:
        # The job the killed watcher left running (said by the second, unless the first said it), then the
        # lines appended since.
        while sum(s["published"] for s in said) < 300_010:
            said.append(second.next("job", timeout=120))
        assert [line for line in second.quiet_for(1.5) if line["event"] == "job"] == []
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=10) == 0
    finally:
        second.process.kill()
    assert [s["status"] for s in said] == ["succeeded"] * len(said) and len(said) == 2
    assert sum(s["published"] for s in said) == 300_010
    assert_each_line_once_in_order(sources_of(read_back, [s["job_id"] for s in said]), {"trades/7078.csv": 300_010})


def test_a_beat_schedule_scans_once_per_period_and_loads_what_arrives(stack, workdir, read_back, ledger) -> None:  # type: ignore[no-untyped-def]
    """`stack up --watch DIR`: Celery beat sends one scan a period, run by one of the two workers, never two at
    once; what arrives loads once; Flower lists the scans; `--watch ''` stops it."""
    job = new_input(workdir)
    relative = job.relative_to(DATA_ROOT).as_posix()
    trades = job / "trades" / "7078.csv"
    last_job = f"k2:watch:{relative}:job"

    def next_job(after: str | None) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            current = ledger.redis.get(last_job)
            if current is not None and current.decode() != after and ledger.report(current.decode()) is not None:
                return str(current.decode())
            time.sleep(0.2)
        raise AssertionError(f"no job from the scheduled scans after {after}")

    up = run_k2("stack", "up", "--workers", "2", "--s3", "--watch", relative, "--watch-every", "1", "--json")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["beat"]["pid"] is not None
    try:
        append(trades, rows(TRADE, 1, 10))
        jobs = [next_job(None)]
        append(trades, rows(TRADE, 11, 14))
        (job / "quotes" / "7181.csv").write_bytes(rows(QUOTE, 1, 5))
        jobs.append(next_job(jobs[-1]))
        if sum(ledger.report(j)["totals"]["published"] for j in jobs) < 19:  # the two arrived in separate scans
            jobs.append(next_job(jobs[-1]))

        scans = f"k2:watch:{relative}:scans"
        before, started = int(ledger.redis.get(scans) or 0), time.monotonic()
        time.sleep(6)
        ran, periods = int(ledger.redis.get(scans) or 0) - before, time.monotonic() - started
        assert periods - 2 <= ran <= periods + 1, f"{ran} scans in {periods:.1f} periods of 1 s (2 workers)"

        flower = json.loads(run_k2("stack", "status", "--json").stdout)["flower"]["url"]
        query = "draw=1&start=0&length=100&search[value]=scan_directory&order[0][column]=0&columns[0][data]=name"
        with urllib.request.urlopen(f"{flower}/tasks/datatable?{query}") as r:  # what Flower's task page shows
            listed = json.load(r)
        assert any(row["name"] == "k2jobs.scan_directory" for row in listed["data"]), listed["data"][:3]
    finally:
        down = run_k2("stack", "up", "--workers", "2", "--s3", "--watch", "", "--json")
        assert down.returncode == 0, down.stderr
    assert "beat" not in json.loads(down.stdout)
    assert [ledger.report(j)["status"] for j in jobs] == ["succeeded"] * len(jobs)
    assert all(ledger.job_options(j)["made_by"] == f"watch {relative}" for j in jobs)
    assert_each_line_once_in_order(sources_of(read_back, jobs), {"trades/7078.csv": 14, "quotes/7181.csv": 5})
