"""The chunk protocol's decisions, every branch, with fakes of the marker partition and the ledger; no services.

The committed check ("did this chunk commit?"), the predecessor check, the attempt states the supervisor acts
on, the supervision round, the ordered header and resume. Each branch is also taken once with the real fault
in the fault tests (tests/test_exactly_once.py).
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
import pytest

from k2jobs.kafka.markers import CommitMarkers, MarkerHidden, marker_key
from k2jobs.load.chunk import Attempt, predecessor_failure, process_chunk
from k2jobs.plan.model import ChunkPlan, FilePlan, JobPlan
from k2jobs.rows.batches import Headers
from k2jobs.store.attempts import LOST, QUEUED, RESERVED, RUNNING, chunk_state, holder_is_dead

COUNTS = {"published": 10, "rejected": 0, "reasons": []}


class FakeMarkerLog:
    """A marker partition: records with a transaction each, which is open, committed or aborted."""

    def __init__(self) -> None:
        self.records_: list[tuple[bytes, bytes, str]] = []  # (key, value, txn)
        self.txn_state: dict[str, str] = {}
        self.scanned: list[tuple[int, int]] = []

    def write(self, key: bytes, txn: str, value: dict[str, Any] = COUNTS, state: str = "committed") -> int:
        self.records_.append((key, orjson.dumps(value), txn))
        self.txn_state.setdefault(txn, state)
        return len(self.records_) - 1

    def end(self) -> int:
        return len(self.records_)

    def stable_end(self) -> int:
        for offset, (_, _, txn) in enumerate(self.records_):
            if self.txn_state[txn] == "open":
                return offset
        return len(self.records_)

    def records(self, start: int, end: int) -> Iterator[tuple[int, bytes, bytes]]:
        self.scanned.append((start, end))
        for offset in range(start, min(end, len(self.records_))):
            key, value, _ = self.records_[offset]
            yield offset, key, value

    def first_committed(self, offset: int) -> int | None:
        for at in range(offset, self.stable_end()):
            if self.txn_state[self.records_[at][2]] == "committed":
                return at
        return None


class FakeClock:
    """time.monotonic and time.sleep for the wait on open transactions; runs `on_sleep` at every sleep."""

    def __init__(self, on_sleep: Callable[[float], object] | None = None) -> None:
        self.now, self.on_sleep = 0.0, on_sleep

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(self.now)


def markers(log: FakeMarkerLog, clock: FakeClock | None = None, wait_s: float = 30.0) -> CommitMarkers:
    clock = clock or FakeClock()
    return CommitMarkers(log, wait_s, sleep=clock.sleep, clock=lambda: clock.now)


KEY = marker_key("job", 3)


def test_a_committed_marker_is_found_with_its_counts() -> None:
    log = FakeMarkerLog()
    log.write(marker_key("job", 1), "t1")
    log.write(KEY, "t3")
    assert markers(log).find(KEY, 0) == COUNTS


def test_no_record_with_the_key_is_no_at_once_whatever_transactions_are_open() -> None:
    log = FakeMarkerLog()
    log.write(marker_key("job", 1), "t1", state="open")
    log.write(marker_key("job", 2), "t2")
    assert markers(log, wait_s=0).find(KEY, 0) is None


def test_a_marker_behind_an_open_transaction_is_waited_for_and_found() -> None:
    """The issue's case: another producer's open transaction before the marker hides it from read_committed."""
    log = FakeMarkerLog()
    log.write(b"blocker", "blocker", state="open")
    log.write(KEY, "t3")
    clock = FakeClock(on_sleep=lambda now: now >= 5 and log.txn_state.update(blocker="aborted"))
    assert markers(log, clock).find(KEY, 0) == COUNTS
    assert clock.now >= 5


def test_a_marker_that_stays_hidden_raises_and_never_answers_no() -> None:
    log = FakeMarkerLog()
    log.write(b"blocker", "blocker", state="open")
    log.write(KEY, "t3")
    with pytest.raises(MarkerHidden):
        markers(log, wait_s=10).find(KEY, 0)


def test_an_aborted_marker_is_no_and_a_later_committed_one_is_yes() -> None:
    log = FakeMarkerLog()
    log.write(KEY, "attempt-1", state="aborted")
    assert markers(log).find(KEY, 0) is None
    log.write(KEY, "attempt-2", {**COUNTS, "published": 7})
    assert markers(log).find(KEY, 0) == {**COUNTS, "published": 7}


def test_markers_before_the_job_start_are_not_this_jobs() -> None:
    log = FakeMarkerLog()
    log.write(KEY, "old")
    start = log.end()
    assert markers(log).find(KEY, start) is None


def test_a_worker_scans_each_marker_once() -> None:
    log = FakeMarkerLog()
    reader = markers(log)
    log.write(marker_key("job", 1), "t1")
    assert reader.find(KEY, 0) is None
    log.write(KEY, "t3")
    assert reader.find(KEY, 0) == COUNTS
    assert log.scanned == [(0, 1), (1, 2)]
    assert reader.find(KEY, 5) is None  # a later start: what is before it is not looked at
    assert log.scanned[-1] == (5, 2)


# -- attempt states ---------------------------------------------------------------------------------


def attempts(**kinds: dict[int, Any]) -> dict[str, dict[int, Any]]:
    return {"queued": {}, "reserved": {}, "running": {}, **kinds}


def test_a_chunk_queued_since_redis_last_restarted_is_queued_however_long_it_waits() -> None:
    assert chunk_state(4, attempts(queued={4: "epoch-2"}), "epoch-2", set()) == QUEUED
    assert chunk_state(4, attempts(queued={4: "epoch-1"}), "epoch-2", set()) == LOST  # Redis may have lost it


def test_reserved_and_running_count_only_on_live_workers() -> None:
    assert chunk_state(4, attempts(reserved={4: "w1"}), "e", {"w1"}) == RESERVED
    assert chunk_state(4, attempts(reserved={4: "w1"}), "e", {"w2"}) == LOST
    running = attempts(running={4: {"worker": "w1", "pid": 9}}, queued={4: "old"})
    assert chunk_state(4, running, "e", {"w1"}) == RUNNING
    assert chunk_state(4, running, "e", set()) == LOST
    assert chunk_state(4, attempts(), "e", {"w1"}) == LOST  # nothing anywhere: lost


def test_a_lease_holder_is_dead_when_its_worker_stopped_beating_or_its_process_is_gone() -> None:
    holder = {"worker": "w1", "pid": 42}
    assert not holder_is_dead(holder, {"w1"}, "w2", 7, lambda pid: False)  # another worker: its heartbeat decides
    assert holder_is_dead(holder, set(), "w2", 7, lambda pid: True)
    assert holder_is_dead(holder, {"w1"}, "w1", 7, lambda pid: pid != 42)  # same worker, its pool process died
    assert not holder_is_dead(holder, {"w1"}, "w1", 7, lambda pid: True)  # same worker, another live process
    # This very process: an earlier attempt here ended while Redis was away and could not release it.
    assert holder_is_dead(holder, {"w1"}, "w1", 42, lambda pid: True)


# -- the predecessor check and process_chunk ----------------------------------------------------------


class FakeLedger:
    """The part of Ledger that process_chunk and the supervision use, in memory."""

    def __init__(self, plan: JobPlan | None = None) -> None:
        self.done: dict[int, dict[str, Any]] = {}
        self.progress: dict[int, int] = {}
        self.plan_ = plan
        self.queued: dict[int, str] = {}
        self.reserved: dict[int, str] = {}
        self.running: dict[int, dict[str, Any]] = {}
        self.live: set[str] = set()
        self.epoch_ = "e1"
        self.reports: dict[str, dict[str, Any]] = {}
        self.redrives = 0
        self.options: dict[str, Any] = {"ordered": True}
        self.lost_messages: set[int] | None = set()  # queued chunks whose message is gone (None: queue not read)
        self.messages_read = 0

    def chunk_result(self, job_id: str, index: int) -> dict[str, Any] | None:
        return self.done.get(index)

    def chunk_results(self, job_id: str, indexes: list[int]) -> list[dict[str, Any] | None]:
        return [self.done.get(i) for i in indexes]

    def record_result(self, job_id: str, index: int, result: dict[str, Any]) -> None:
        if result["status"] == "committed" or index not in self.done:
            self.done[index] = result

    def record_results(self, job_id: str, results: list[dict[str, Any]]) -> None:
        for result in results:
            self.record_result(job_id, result["chunk"], result)

    def results(self, job_id: str) -> dict[int, dict[str, Any]]:
        return dict(self.done)

    def set_progress(self, job_id: str, index: int, rows: int) -> None:
        self.progress[index] = rows

    # supervision
    def epoch(self) -> str:
        return self.epoch_

    def running_jobs(self) -> list[str]:
        return [j for j in ("job", "broken") if j not in self.reports]

    def report(self, job_id: str) -> dict[str, Any] | None:
        return self.reports.get(job_id)

    def plan(self, job_id: str) -> JobPlan:
        if job_id == "broken":
            raise ValueError("a plan this version cannot read")
        assert self.plan_ is not None
        return self.plan_

    def job_options(self, job_id: str) -> dict[str, Any]:
        return self.options

    def attempts(self, job_id: str, indexes: list[int]) -> dict[str, dict[int, Any]]:
        return attempts(queued=dict(self.queued), reserved=dict(self.reserved), running=dict(self.running))

    def live_workers(self, names: Iterable[str]) -> set[str]:
        return self.live & set(names)

    def chunk_messages(self, limit: int) -> set[tuple[str, int]] | None:
        self.messages_read += 1
        if self.lost_messages is None:
            return None  # a queue too long to read
        return {("job", i) for i in self.queued if i not in self.lost_messages}

    def count_redrive(self, job_id: str, chunks: int) -> int:
        self.redrives += chunks
        return self.redrives

    # what enqueue_chunks and finish_job_if_done use (the supervision tests replace both)
    def mark_queued(self, job_id: str, indexes: Iterable[int]) -> None:
        self.queued.update({i: self.epoch_ for i in indexes})

    def job_meta(self, job_id: str) -> dict[str, str]:
        return {"created": "0"}

    def save_report(self, job_id: str, report: dict[str, Any]) -> dict[str, Any]:
        return self.reports.setdefault(job_id, report)

    def remember_loaded(self, job_id: str, plan: JobPlan) -> None:
        pass


class FakeMarkers:
    def __init__(self, committed: set[bytes] | None = None, hidden: bool = False) -> None:
        self.committed: set[bytes] = committed or set()
        self.hidden = hidden
        self.asked: list[bytes] = []

    def find(self, key: bytes, start: int, keepalive: Any = None) -> dict[str, Any] | None:
        self.asked.append(key)
        if self.hidden:
            raise MarkerHidden("open transaction")
        return COUNTS if key in self.committed else None


def plan_of(*groups: list[int], rows: int = 10) -> JobPlan:
    """A plan with one file per group of chunk indexes, each its own key."""
    files, chunks = [], []
    for n, group in enumerate(groups):
        files.append(FilePlan(f"trades/{n}.csv", "trades", f"S{n}", n, rows * len(group), list(group)))
        chunks += [
            ChunkPlan(i, f"trades/{n}.csv", f"trades/{n}.csv", "trades", f"S{n}", n, 0, 1, 1, rows, 0, 1) for i in group
        ]
    return JobPlan("job", files, sorted(chunks, key=lambda c: c.index))


def attempt(index: int = 3, after: int | None = 2, rerun: bool = True) -> Attempt:
    return Attempt("job", plan_of([2, 3]).chunks[1] if index == 3 else plan_of([index]).chunks[0], after, rerun)


def test_predecessor_committed_in_redis_or_only_in_kafka_lets_the_chunk_publish() -> None:
    ledger = FakeLedger()
    ledger.done[2] = {"status": "committed", "path": "trades/0.csv"}
    assert predecessor_failure(attempt(), ledger, FakeMarkers()) is None
    assert predecessor_failure(attempt(), FakeLedger(), FakeMarkers({marker_key("job", 2)})) is None


def test_predecessor_failed_or_never_committed_holds_the_chunk_back_with_the_reason() -> None:
    ledger = FakeLedger()
    ledger.done[2] = {"chunk": 2, "status": "failed", "path": "trades/0.csv", "error": "boom"}
    reason = predecessor_failure(attempt(), ledger, FakeMarkers({marker_key("job", 2)}))
    assert reason is not None and "chunk 2 (trades/0.csv)" in reason and "boom" in reason
    reason = predecessor_failure(attempt(), FakeLedger(), FakeMarkers())
    assert reason is not None and "it has no result" in reason


def test_a_hidden_predecessor_marker_raises_instead_of_holding_the_chunk_back() -> None:
    with pytest.raises(MarkerHidden):
        predecessor_failure(attempt(), FakeLedger(), FakeMarkers(hidden=True))


class FakeTransaction:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.compiled = False  # no librdkafka handle: every row goes through send_batch

    def begin(self) -> None:
        self.events.append("begin")

    def queue_rows(
        self, topic: str, rows: Any, key: bytes, data: bytes, pos: int, line_no: int, max_lines: int, ingestion: int
    ) -> tuple[int, int, int, bool]:
        raise AssertionError("not compiled: every row goes through send_batch")

    def send_batch(self, topic: str, key: bytes, values: list[bytes], headers: list[Headers]) -> None:
        self.events.append(f"batch {topic} {len(values)}")

    def send(self, topic: str, key: bytes, value: bytes, headers: Headers, partition: int = -1) -> None:
        self.events.append(f"marker {topic} partition {partition}")

    def commit(self) -> None:
        self.events.append("commit")

    def abort(self) -> None:
        self.events.append("abort")


@pytest.fixture()
def one_chunk(tmp_path):  # type: ignore[no-untyped-def]
    from k2jobs.sources.local import plan_job

    (tmp_path / "in" / "trades").mkdir(parents=True)
    (tmp_path / "in" / "reference-data").mkdir()
    (tmp_path / "in" / "reference-data" / "company_info.csv").write_text("company_id,symbol\n7078,BHP\n")
    line = b"03/10/2014,10:05:51.000,37.53,100,3,XT,\r\n"
    (tmp_path / "in" / "trades" / "7078.csv").write_bytes(line * 5)
    plan = plan_job(tmp_path, tmp_path / "in", 100)
    return tmp_path, plan.chunks[0]


def run(one_chunk, ledger: FakeLedger, markers_: FakeMarkers, rerun: bool, give_up: str | None = None):  # type: ignore[no-untyped-def]
    root, chunk = one_chunk
    events: list[str] = []
    at = Attempt("job", chunk, None, rerun, give_up=give_up)
    result = process_chunk(at, root, 1000, ledger, markers_, lambda j, i: FakeTransaction(events))
    return result, events, at


def test_a_first_attempt_publishes_without_asking_kafka_and_marks_before_committing(one_chunk) -> None:  # type: ignore[no-untyped-def]
    markers_ = FakeMarkers()
    result, events, at = run(one_chunk, FakeLedger(), markers_, rerun=False)
    assert result["status"] == "committed" and result["published"] == 5
    assert markers_.asked == []
    assert events == ["begin", "batch market.trades.raw 5", "marker k2jobs.commits partition 0", "commit"]
    assert at.commit_started


def test_a_rerun_of_a_committed_chunk_publishes_nothing_and_records_it_committed(one_chunk) -> None:  # type: ignore[no-untyped-def]
    root, chunk = one_chunk
    ledger = FakeLedger()
    result, events, _ = run(one_chunk, ledger, FakeMarkers({marker_key("job", chunk.index)}), rerun=True)
    assert events == [] and result["status"] == "committed" and ledger.done[chunk.index] == result


def test_a_rerun_whose_marker_is_hidden_raises_and_publishes_nothing(one_chunk) -> None:  # type: ignore[no-untyped-def]
    ledger = FakeLedger()
    with pytest.raises(MarkerHidden):
        run(one_chunk, ledger, FakeMarkers(hidden=True), rerun=True)
    assert ledger.done == {}


def test_a_rerun_of_an_uncommitted_chunk_publishes_it(one_chunk) -> None:  # type: ignore[no-untyped-def]
    result, events, _ = run(one_chunk, FakeLedger(), FakeMarkers(), rerun=True)
    assert result["status"] == "committed" and "commit" in events


def test_giving_up_fails_the_chunk_only_if_kafka_says_it_did_not_commit(one_chunk) -> None:  # type: ignore[no-untyped-def]
    _, chunk = one_chunk
    result, events, _ = run(one_chunk, FakeLedger(), FakeMarkers(), rerun=False, give_up="3 attempts died")
    assert result["status"] == "failed" and result["error"] == "3 attempts died" and events == []
    committed = FakeMarkers({marker_key("job", chunk.index)})
    result, events, _ = run(one_chunk, FakeLedger(), committed, rerun=False, give_up="3 attempts died")
    assert result["status"] == "committed" and events == []


# -- supervision, ordered header, resume ---------------------------------------------------------------


@pytest.fixture()
def supervised(monkeypatch):  # type: ignore[no-untyped-def]
    """A JobSupervision over a FakeLedger, with enqueueing recorded instead of sent to Celery."""
    import k2jobs.jobs.supervisor as supervisor

    sent: list[list[int]] = []
    finished: list[str] = []
    monkeypatch.setattr(supervisor, "enqueue_chunks", lambda ledger, job, plan, chunks, ordered: sent.append(chunks))

    def finish(ledger, job_id, plan=None):  # type: ignore[no-untyped-def]
        finished.append(job_id)
        ledger.reports[job_id] = {"status": "succeeded"}
        return ledger.reports[job_id]

    monkeypatch.setattr(supervisor, "finish_job_if_done", finish)
    ledger = FakeLedger(plan_of([0, 1, 2], [3]))
    return supervisor.JobSupervision(ledger, stall_after_s=20), ledger, sent, finished


def test_a_queued_chunk_is_never_redriven_and_no_report_is_saved(supervised) -> None:  # type: ignore[no-untyped-def]
    supervision, ledger, sent, finished = supervised
    ledger.done[0] = {"status": "committed"}
    ledger.queued = {1: "e1", 3: "e1"}
    for hour in range(10):
        supervision.round(now=hour * 3600.0)
    assert sent == [] and finished == [] and ledger.redrives == 0
    assert ledger.messages_read == 9  # its message was looked for once it had waited, and found each time


def test_a_queued_chunk_whose_message_is_gone_is_lost_and_redriven(supervised) -> None:  # type: ignore[no-untyped-def]
    """A worker killed as it took a message off the queue loses it (kombu records it unacked only after the pop):
    the chunk stays marked queued, but no message of it is waiting or delivered."""
    supervision, ledger, sent, _ = supervised
    ledger.done[0] = {"status": "committed"}
    ledger.queued = {1: "e1", 3: "e1"}
    ledger.lost_messages = {1}
    for now in (0.0, 10.0, 20.0, 30.0):
        supervision.round(now=now)
    assert sent == []  # queued for 20 s: looked for at 20 s, lost since then
    supervision.round(now=40.0)
    assert sent == [[1]] and ledger.redrives == 1  # the other one still has its message


def test_a_queue_too_long_to_read_is_trusted(supervised) -> None:  # type: ignore[no-untyped-def]
    supervision, ledger, sent, _ = supervised
    ledger.queued = {0: "e1", 3: "e1"}
    ledger.lost_messages = None
    for hour in range(3):
        supervision.round(now=hour * 3600.0)
    assert sent == []


def test_a_lost_chunk_is_redriven_once_it_has_been_lost_for_the_stall_time(supervised) -> None:  # type: ignore[no-untyped-def]
    supervision, ledger, sent, _ = supervised
    ledger.done[0] = {"status": "committed"}
    ledger.queued = {1: "e0", 3: "e1"}  # chunk 1 was queued before Redis restarted (epoch e0)
    ledger.running = {3: {"worker": "w1", "pid": 1}}
    ledger.live = {"w1"}
    supervision.round(now=100.0)
    supervision.round(now=110.0)
    assert sent == []
    actions = supervision.round(now=121.0)
    assert sent == [[1]] and ledger.redrives == 1 and any("chunks [1]" in a for a in actions)


def test_a_job_whose_round_takes_long_is_looked_at_less_often(supervised, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A round over a job of 100,000 files reads every chunk's result: the next one waits ROUND_SPACING times as
    long, so supervising never takes most of a worker's main process; a lost chunk is still redriven."""
    import k2jobs.jobs.supervisor as supervisor

    supervision, ledger, sent, _ = supervised
    ledger.done[0] = {"status": "committed"}
    ledger.queued = {1: "e0", 3: "e0"}  # both lost: queued before Redis restarted
    clock = iter([0.0, 3.0] * 10)  # each round of the job takes 3 s by the supervisor's timer
    timer = types.SimpleNamespace(monotonic=time.monotonic, perf_counter=lambda: next(clock))
    monkeypatch.setattr(supervisor, "time", timer)
    looked = []
    reads = ledger.results

    def results(job_id: str) -> dict:  # type: ignore[type-arg]
        looked.append(job_id)
        return reads(job_id)

    monkeypatch.setattr(ledger, "results", results)
    for now in (0.0, 5.0, 10.0, 25.0):
        supervision.round(now=now)
    assert looked == ["job"] and sent == []  # looked at 0 s, then not before 30 s (3 s x 10)
    supervision.round(now=30.0)
    assert len(looked) == 2 and sent == [[1, 3]]  # lost since 0 s, for longer than the stall time: redriven
    supervision.round(now=59.0)
    assert len(looked) == 2


def test_a_chunk_found_again_before_the_stall_time_is_not_redriven(supervised) -> None:  # type: ignore[no-untyped-def]
    supervision, ledger, sent, _ = supervised
    ledger.done.update({0: {"status": "committed"}, 3: {"status": "committed"}})
    supervision.round(now=0.0)  # chunk 1: nothing anywhere
    ledger.reserved = {1: "w2"}
    ledger.live = {"w2"}
    supervision.round(now=15.0)
    ledger.reserved = {}
    supervision.round(now=25.0)  # lost again: its clock starts again
    assert sent == []


def test_a_job_that_raises_does_not_stop_the_supervision_of_the_others(supervised) -> None:  # type: ignore[no-untyped-def]
    supervision, ledger, _, finished = supervised
    ledger.done.update({i: {"status": "committed"} for i in range(4)})
    actions = supervision.round(now=0.0)
    assert finished == ["job"]
    assert any("broken" in a and "ValueError" in a for a in actions)


def test_the_ordered_header_chains_each_key_from_its_first_pending_chunk() -> None:
    from k2jobs.jobs.lifecycle import ordered_header

    plan = plan_of([0, 1, 2], [3, 4])
    header, heads = ordered_header("job", plan, [1, 2, 4])
    assert heads == [1, 4]
    first = header[0].tasks  # a chain: chunk 1 after 0, chunk 2 after 1
    assert [t.args for t in first] == [("job", 1, 0), ("job", 2, 1)]
    assert header[1].args == ("job", 4, 3)  # one chunk left in its key: a task, not a chain


def test_layers_import_downwards_only() -> None:
    """The Celery app does not import the job lifecycle that imports it; a client never loads the workers' side."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, k2jobs.app, k2jobs.jobs.submit, k2jobs.cli, k2jobs.jobs.lifecycle; print(sorted(sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'k2jobs.jobs.lifecycle'" in loaded  # the client enqueues through it (imported while it plans)
    for workers_only in ("k2jobs.worker", "k2jobs.jobs.supervisor", "k2jobs.worker.tasks"):
        assert f"'{workers_only}'" not in loaded


@pytest.fixture()
def small_files(tmp_path):  # type: ignore[no-untyped-def]
    """Three companies' small trade files, one of them in two files (a key with two files), and one big file."""
    from k2jobs.sources.local import plan_job

    root = tmp_path / "in"
    (root / "trades").mkdir(parents=True)
    (root / "reference-data").mkdir()
    (root / "reference-data" / "company_info.csv").write_text("company_id,symbol\n1,AAA\n2,BBB\n3,BBB\n4,CCC\n5,DDD\n")
    line = b"03/10/2014,10:05:51.000,37.53,100,3,XT,\r\n"
    for name, rows in (("1", 3), ("2", 4), ("3", 2), ("4", 5), ("5", 30)):
        (root / "trades" / f"{name}.csv").write_bytes(line * rows)
    return tmp_path, plan_job(tmp_path, root, 10)


def test_small_keys_share_a_task_whole_and_in_file_order_and_big_keys_keep_their_chains(small_files) -> None:  # type: ignore[no-untyped-def]
    from k2jobs.jobs.lifecycle import ordered_header

    _, plan = small_files
    by_path = {f.path: f.chunks for f in plan.files}
    aaa, bbb1, bbb2, ccc = (by_path[f"trades/{n}.csv"][0] for n in "1234")
    # AAA (3 rows) + BBB's two files (4 + 2) fit in 10 rows; CCC (5) would not: it starts the next shared task
    # alone, which is no bundle. DDD (30 rows, 3 chunks of 10) has tasks of its own, one chunk each.
    assert plan.tasks == {aaa: [aaa, bbb1, bbb2]}
    assert [c.path for c in plan.task_chunks(aaa)] == ["trades/1.csv", "trades/2.csv", "trades/3.csv"]
    assert plan.tasks_of([bbb2, ccc, aaa]) == [aaa, ccc]
    header, heads = ordered_header("job", plan, list(range(len(plan.chunks))))
    ddd = by_path["trades/5.csv"]
    assert sorted(heads) == sorted([aaa, ccc, ddd[0]])
    assert len(header) == 3  # the shared task once, CCC alone, DDD's chain
    ddd_chain = next(h for h in header if hasattr(h, "tasks"))
    assert [t.args for t in ddd_chain.tasks] == [
        ("job", ddd[0], None),
        ("job", ddd[1], ddd[0]),
        ("job", ddd[2], ddd[1]),
    ]
    assert plan.from_dict(orjson.loads(orjson.dumps(plan.to_dict()))).tasks == plan.tasks


def test_a_keys_consecutive_small_chunks_share_tasks_that_chain(small_files) -> None:  # type: ignore[no-untyped-def]
    from k2jobs.jobs.lifecycle import ordered_header
    from k2jobs.sources.local import plan_job

    root, _ = small_files
    plan = plan_job(root, root / "in", 4, task_rows=10)  # DDD: 30 rows in chunks of 4 -> tasks of 2 chunks
    ddd = next(f.chunks for f in plan.files if f.path == "trades/5.csv")
    assert len(ddd) == 8
    chain_ = [ddd[n] for n in range(0, 8, 2)]
    assert [plan.tasks[u] for u in chain_] == [ddd[n : n + 2] for n in range(0, 8, 2)]
    header, _ = ordered_header("job", plan, ddd[3:])  # tasks from the one holding chunk 3 of DDD
    ddd_chain = next(h for h in header if hasattr(h, "tasks"))
    assert [t.args for t in ddd_chain.tasks] == [
        ("job", chain_[1], chain_[0]),
        ("job", chain_[2], chain_[1]),
        ("job", chain_[3], chain_[2]),
    ]


def run_bundle(small_files, ledger: FakeLedger, markers_: FakeMarkers, rerun: bool):  # type: ignore[no-untyped-def]
    root, plan = small_files
    lead = next(iter(plan.tasks))
    events: list[str] = []
    at = Attempt("job", plan.chunks[lead], None, rerun, task_chunks=plan.task_chunks(lead))
    result = process_chunk(at, root, 1000, ledger, markers_, lambda j, i: FakeTransaction(events))
    return result, events, plan.task_chunks(lead)


def test_a_bundle_publishes_its_files_in_one_transaction_under_one_marker(small_files) -> None:  # type: ignore[no-untyped-def]
    ledger = FakeLedger()
    result, events, members = run_bundle(small_files, ledger, FakeMarkers(), rerun=False)
    assert events == [
        "begin",
        "batch market.trades.raw 3",
        "batch market.trades.raw 4",
        "batch market.trades.raw 2",
        "marker k2jobs.commits partition 0",
        "commit",
    ]
    assert result["status"] == "committed" and result["published"] == 9
    assert [ledger.done[c.index]["published"] for c in members] == [3, 4, 2]


def test_a_changed_file_fails_its_whole_task_with_the_reason_and_nothing_is_sent(small_files) -> None:  # type: ignore[no-untyped-def]
    root, plan = small_files
    (root / "in" / "trades" / "2.csv").write_bytes(b"changed\r\n")
    ledger = FakeLedger()
    result, events, members = run_bundle(small_files, ledger, FakeMarkers(), rerun=False)
    assert events == []  # a task commits all its chunks or none: `resume` loads them all once the file is back
    aaa, bbb1, bbb2 = (ledger.done[c.index] for c in members)
    assert bbb1["status"] == "failed" and "trades/2.csv changed after submit" in bbb1["error"]
    for other in (aaa, bbb2):
        assert other["status"] == "failed" and "(trades/2.csv), in the same transaction, changed" in other["error"]
    assert result["status"] == "failed"


def test_a_task_after_a_task_of_several_chunks_waits_for_all_of_them() -> None:
    ledger = FakeLedger()
    ledger.done[0] = {"chunk": 0, "status": "committed", "path": "trades/0.csv"}
    at = Attempt("job", plan_of([0, 1, 2]).chunks[2], 0, after_chunks=[0, 1])
    assert "chunk 0 comes before it and it has no result" in (predecessor_failure(at, ledger, FakeMarkers()) or "")
    ledger.done[1] = {"chunk": 1, "status": "failed", "path": "trades/0.csv", "error": "boom"}
    assert "chunk 1 (trades/0.csv)" in (predecessor_failure(at, ledger, FakeMarkers()) or "")
    ledger.done[1] = {"chunk": 1, "status": "committed", "path": "trades/0.csv"}
    assert predecessor_failure(at, ledger, FakeMarkers()) is None


def test_a_rerun_of_a_committed_bundle_records_every_file_from_its_marker_and_publishes_nothing(small_files) -> None:  # type: ignore[no-untyped-def]
    first = FakeLedger()
    run_bundle(small_files, first, FakeMarkers(), rerun=False)
    _, plan = small_files
    lead = next(iter(plan.tasks))
    value = {"chunks": {str(i): first.done[i] for i in plan.tasks[lead]}}

    class BundleMarkers(FakeMarkers):
        def find(self, key: bytes, start: int, keepalive: Any = None) -> dict[str, Any] | None:
            self.asked.append(key)
            return value

    (small_files[0] / "in" / "trades" / "2.csv").write_bytes(b"changed after its commit\r\n")
    again = FakeLedger()
    result, events, members = run_bundle(small_files, again, BundleMarkers(), rerun=True)
    assert events == []  # fenced, asked Kafka, found the marker: nothing read, nothing sent
    assert [again.done[c.index]["status"] for c in members] == ["committed"] * 3
    assert result["published"] == 9
