"""`status --wait` never waits in silence: it says which chunks are stuck and why, and `--timeout` ends the wait."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from .conftest import chunk_consumers_paused, run_k2

STALLED = {"K2_STALL_WARN_S": "2"}  # say what is stuck after 2 s without movement (default 30)


def test_wait_with_no_worker_consuming_names_the_stuck_chunks_and_times_out(stack, ledger) -> None:  # type: ignore[no-untyped-def]
    with chunk_consumers_paused():  # workers up, but taking no chunk
        submitted = run_k2("submit", "sample", "--again", "--chunk-rows", "40000", "--timeout", "3", env=STALLED)
        assert submitted.returncode == 6, submitted.stderr  # submit --wait --timeout: its own exit code
        job_id = re.search(r"job (\S+): 9 chunks", submitted.stderr).group(1)  # type: ignore[union-attr]
        waited = run_k2("status", job_id, "--wait", "--timeout", "10", env=STALLED)
        assert waited.returncode == 6, waited.stderr
        assert f"job {job_id} has not ended after 10s of waiting; it keeps running" in waited.stderr
        assert f"job {job_id}: nothing has moved for " in waited.stderr
        plan = ledger.plan(job_id)
        for chunk in plan.chunks[:8]:  # named one by one, the ninth counted
            assert f"chunk {chunk.index} ({chunk.path}, 0/{chunk.rows} rows)" in waited.stderr
        assert "1 more" in waited.stderr
        assert "no worker consumes queue k2jobs.chunks (2 answered" in waited.stderr
        assert re.search(r"queue k2jobs.chunks holds [1-9] task\(s\) no worker has taken", waited.stderr)
        assert "and Kafka at" in waited.stderr and "answer" in waited.stderr
        assert ledger.job_meta(job_id)["status"] == "running"
    done = run_k2("status", job_id, "--wait", "--json", "--timeout", "120")  # the job went on by itself
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["published"] == 170_332
    assert "nothing has moved" not in done.stderr


def test_a_moving_job_prints_no_stall_message(stack) -> None:  # type: ignore[no-untyped-def]
    done = run_k2("submit", "sample", "--again", "--json", "--timeout", "120", env={"K2_STALL_WARN_S": "5"})
    assert done.returncode == 0, done.stderr
    assert "nothing has moved" not in done.stderr


def test_stall_description_says_redis_or_kafka_is_unreachable(stack, settings, ledger) -> None:  # type: ignore[no-untyped-def]
    from k2jobs.jobs.diagnose import describe_stall
    from k2jobs.store.ledger import Ledger, connect

    job_id = json.loads(run_k2("submit", "sample", "--again", "--json").stdout)["job_id"]
    no_redis = replace(settings, redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    [line] = describe_stall(no_redis, Ledger(connect(no_redis.redis_url, timeout_s=1)), job_id)
    assert line.startswith("Redis at redis://127.0.0.1:1/0 is unreachable")
    no_kafka = replace(settings, kafka_bootstrap="127.0.0.1:1")
    lines = describe_stall(no_kafka, ledger, job_id)
    assert lines[0] == "stuck: none (every chunk has a result; reconciling)"
    assert "Kafka at 127.0.0.1:1 did not answer within 3s: no chunk can publish" in lines


def test_stall_watch_warns_after_the_threshold_then_every_threshold_until_something_moves() -> None:
    from k2jobs.jobs.waiting import Progress, StallWatch

    def at(rows_done: int) -> Progress:
        return Progress("j", "running", 100, rows_done, 2, 0, 0, 1.0)

    watch = StallWatch(30.0, moved=0.0)
    watch.saw(at(0), 0.0)
    assert [watch.due(t) for t in (10.0, 29.9, 30.0, 31.0, 59.0, 60.0)] == [False, False, True, False, False, True]
    watch.saw(at(0), 61.0)  # same numbers: still stalled
    assert watch.due(90.0)
    watch.saw(at(5), 91.0)  # rows moved: quiet again for 30 s
    assert [watch.due(t) for t in (100.0, 120.9, 121.0)] == [False, False, True]


def test_wait_rides_out_an_unreachable_redis_saying_so_until_its_timeout() -> None:
    from k2jobs.errors import WaitTimeout
    from k2jobs.jobs.waiting import wait_for_report
    from k2jobs.store.ledger import Ledger, connect

    gone = Ledger(connect("redis://127.0.0.1:1/0", timeout_s=0.2))  # nothing listens on port 1
    stalls: list[float] = []
    with pytest.raises(WaitTimeout, match="it keeps running"):
        wait_for_report(gone, "some-job", interval_s=0.1, timeout_s=1.5, stall_warn_s=0.5, on_stall=stalls.append)
    assert 2 <= len(stalls) <= 3 and stalls[0] >= 0.5  # at 0.5 s, then every 0.5 s while nothing moves
