"""Every job ends by itself: services crash and come back, chunks raise, workers freeze; no `resume` needed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from .conftest import DATA_ROOT, TEST_STACK, chunk_consumers_paused, run_k2
from .test_faults import (
    ROWS,
    assert_exact,
    assert_exact_or_hanging_told,
    big_input,
    mid_job,
    stack_pid,
    start_job,
    wait_until,
)

pytestmark = pytest.mark.fault
__all__ = ["big_input"]  # the fixture, shared with the other fault tests


def test_redis_killed_mid_job_the_job_ends_by_itself(stack, settings, ledger, big_input, read_back) -> None:  # type: ignore[no-untyped-def]
    redis_pid = stack_pid("redis")
    job_id = start_job(big_input)
    wait_until(mid_job(ledger, job_id), what="a chunk in progress")
    os.killpg(redis_pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{redis_pid}").exists(), what="Redis to die")
    time.sleep(3)  # chunks, chord and chain messages fail while Redis is away
    up = run_k2("stack", "up", "--workers", "2")
    assert up.returncode == 0, up.stderr
    back = time.monotonic()
    assert_exact(read_back, job_id)  # `status --wait` only: nobody resumes the job
    # Attempts that ended while Redis was away left their leases: they end within 10 s (no renewal), the
    # chunks are re-driven K2_STALL_AFTER (5 s) later, and the rest of the job takes seconds. It took 178 s once.
    assert time.monotonic() - back < 45


def test_worker_frozen_longer_than_a_transaction_then_continued(stack, settings, ledger, big_input, read_back) -> None:  # type: ignore[no-untyped-def]
    timeout_s = int(settings.kafka_options["transaction.timeout.ms"]) / 1000
    worker = stack_pid("worker-1")
    job_id = start_job(big_input)
    wait_until(mid_job(ledger, job_id), what="a chunk in progress")
    os.killpg(worker, signal.SIGSTOP)
    try:
        time.sleep(max(timeout_s, settings.visibility_timeout_s) + 10)  # its transaction is aborted by Kafka
    finally:
        os.killpg(worker, signal.SIGCONT)
    assert_exact(read_back, job_id)


def test_an_exception_in_a_chunk_fails_the_job_with_the_reason(stack, settings, ledger, workdir) -> None:  # type: ignore[no-untyped-def]
    from k2jobs.jobs.lifecycle import enqueue_chunks
    from k2jobs.jobs.submit import new_job_id
    from k2jobs.sources.local import plan_job

    (workdir / "trades").mkdir()
    (workdir / "quotes").mkdir()
    (workdir / "reference-data").mkdir()
    (workdir / "reference-data" / "company_info.csv").write_text("company_id,symbol\n7078,BHP\n")
    sample = DATA_ROOT / "sample"
    for kind in ("trades", "quotes"):
        (workdir / kind / "7078.csv").write_bytes((sample / kind / "7078.csv").read_bytes())
    plan = plan_job(DATA_ROOT, workdir, 30_000)
    trades = [c.index for c in plan.chunks if c.kind == "trades"]
    broken = trades[1]
    # A chunk task the code cannot handle: an unknown kind raises ValueError deep inside the chunk.
    plan.chunks[broken] = replace(plan.chunks[broken], kind="nonsense")
    job_id = new_job_id()
    ledger.create_job(job_id, plan, {"chunk_rows": 30_000, "ordered": True})
    enqueue_chunks(ledger, job_id, plan, list(range(len(plan.chunks))))
    done = run_k2("status", job_id, "--wait", "--json", timeout=300)
    report = json.loads(done.stdout)
    assert done.returncode == 1 and report["status"] == "failed", report
    errors = {f["chunk"]: f["error"] for f in report["failures"] if f["chunk"] is not None}
    assert "ValueError" in errors[broken] and "nonsense" in errors[broken]
    assert set(errors) == set(trades[1:])  # the rest of the key is held back, with the reason
    assert all(f"chunk {broken}" in errors[i] for i in trades[2:])
    quotes = next(f for f in report["files"] if f["kind"] == "quotes")
    assert quotes["published"] == quotes["rows"]


def test_kafka_down_longer_than_the_retries_fails_the_job_then_resume_completes_it(  # type: ignore[no-untyped-def]
    stack, settings, ledger, big_input, read_back
) -> None:
    """A worker with a small retry budget (2 retries and 8 s): the job fails by itself, naming Kafka and the
    budget spent (the first failure's time travels with the retried message); `resume` loads the rest."""
    with chunk_consumers_paused():  # only the short-budget worker loads
        log = (TEST_STACK / "logs" / "short-retries-worker.log").open("ab")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "k2jobs.app", "worker", "-Q", "k2jobs.chunks,k2jobs.control"]
            + ["-c", "1", "-n", "short-retries@%h", "--loglevel", "INFO"],
            env={**os.environ, "K2_CHUNK_RETRIES": "2", "K2_CHUNK_RETRY_S": "8"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            job_id = start_job(big_input)
            wait_until(mid_job(ledger, job_id), timeout_s=120, what="a chunk in progress")
            kafka = stack_pid("kafka")
            os.killpg(kafka, signal.SIGKILL)
            done = run_k2("status", job_id, "--wait", "--json", timeout=600)
            report = json.loads(done.stdout)
            assert done.returncode == 1 and report["status"] == "failed"
            reasons = " ".join(f["error"] for f in report["failures"])
            spent = [(int(n), int(s)) for n, s in re.findall(r"gave up after (\d+) retries in (\d+)s", reasons)]
            assert spent and all(n >= 2 and s >= 8 for n, s in spent), reasons
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(60)
            up = run_k2("stack", "up", "--workers", "2")  # whatever failed: the next tests need a broker
    assert up.returncode == 0, up.stderr
    resumed = run_k2("resume", job_id, "--json", timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["totals"]["published"] == ROWS
    assert_exact_or_hanging_told(settings, read_back, job_id)
