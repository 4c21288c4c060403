"""The whole path against the real Redis, Kafka broker and Celery workers: submit, load, read back."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import orjson

from .conftest import DATA_ROOT, run_k2
from .reference import expected_value, source_lines

SAMPLE_ROWS = {
    "trades/7078.csv": 91_631,
    "trades/7181.csv": 232,
    "trades/3153.csv": 11,
    "quotes/7078.csv": 77_849,
    "quotes/7181.csv": 549,
    "quotes/3153.csv": 60,
}


def submit_json(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    done = run_k2("submit", *args, "--json", "--again")
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_sample_loads_every_row_exactly_once_and_bit_exact(stack, settings, read_back) -> None:  # type: ignore[no-untyped-def]
    started_ms = int(time.time() * 1000)
    code, report = submit_json("sample", "--chunk-rows", "20000")
    assert code == 0, report
    assert report["status"] == "succeeded"
    assert report["totals"] == {"rows": 170_332, "published": 170_332, "rejected": 0}
    assert {f["path"]: f["rows"] for f in report["files"]} == SAMPLE_ROWS
    assert {f["path"]: f["published"] for f in report["files"]} == SAMPLE_ROWS
    assert report["failures"] == []
    assert next(f for f in report["files"] if f["path"] == "trades/7078.csv")["chunks"] == 5

    sources: Counter[str] = Counter()
    lines = {path: source_lines(DATA_ROOT / "sample", path) for path in SAMPLE_ROWS}
    for msg in read_back(report["job_id"]):
        assert not msg.topic.endswith(".dlq"), msg.value
        sources[msg.source] += 1
        path, line_no = msg.source.rsplit(":", 1)
        kind, company = path.split("/")[0], int(Path(path).stem)
        assert msg.topic == f"market.{kind}.raw"
        value = orjson.loads(msg.value)
        assert msg.key == f"ASX.{value['symbol']}".encode()
        assert started_ms - 5000 <= value.pop("ingestion_timestamp") <= int(time.time() * 1000)
        assert value == expected_value(kind, company, lines[path][int(line_no)])
    assert sum(sources.values()) == 170_332
    assert max(sources.values()) == 1
    for path, rows in lines.items():
        assert {f"{path}:{n}" for n in rows} <= set(sources), path


def test_known_timestamp_and_decimal_are_exact(stack, settings, workdir, read_back) -> None:  # type: ignore[no-untyped-def]
    (workdir / "trades").mkdir()
    (workdir / "reference-data").mkdir()
    (workdir / "reference-data" / "company_info.csv").write_text("company_id,symbol\n7078,BHP\n")
    (workdir / "trades" / "7078.csv").write_bytes(b"03/10/2014,07:57:14.754,36.6670,20000,3,,\r\n")
    code, report = submit_json(str(workdir.relative_to(DATA_ROOT)))
    assert code == 0, report
    [msg] = list(read_back(report["job_id"]))
    value = orjson.loads(msg.value)
    assert value["exchange_timestamp"] == 1394398634754
    assert value["price"] == "36.6670"
    assert value["venue"] is None and value["buyer_id"] is None
    assert msg.source == "trades/7078.csv:1"


def test_no_wait_returns_job_id_and_status_waits_for_the_report(stack) -> None:  # type: ignore[no-untyped-def]
    code, reply = submit_json("sample", "--no-wait")
    assert code == 0 and set(reply) == {"job_id"}
    done = run_k2("status", reply["job_id"], "--wait", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["job_id"] == reply["job_id"]
    assert report["totals"]["published"] == 170_332
    listed = run_k2("jobs", "--json", check=True)
    assert reply["job_id"] in {j["job_id"] for j in json.loads(listed.stdout)}


def test_verify_reads_the_job_back_and_agrees(stack) -> None:  # type: ignore[no-untyped-def]
    code, report = submit_json("sample")
    assert code == 0
    done = run_k2("verify", report["job_id"], "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is True
    assert sum(f["found_published"] for f in result["files"]) == 170_332


def test_verify_names_a_partition_where_committed_reading_stops(stack, settings) -> None:  # type: ignore[no-untyped-def]
    """An open transaction ahead of the job's messages: verify says where reading stopped, then agrees."""
    from confluent_kafka import Producer

    from k2jobs.kafka.producer import PRODUCER_DEFAULTS

    blocker = Producer(
        settings.kafka_config(
            **{
                "transactional.id": f"test-blocker-{time.time_ns()}",
                "partitioner": PRODUCER_DEFAULTS["partitioner"],
                # Open for the whole test, whatever the test stack's shorter K2_KAFKA_OPT_TRANSACTION_TIMEOUT_MS.
                "transaction.timeout.ms": 300_000,
            }
        )
    )
    blocker.init_transactions(30)
    blocker.begin_transaction()
    blocker.produce("market.trades.raw", b"{}", b"ASX.BHP")  # the partition BHP's trades go to
    blocker.flush(30)
    try:
        code, report = submit_json("sample")
        assert code == 0
        done = run_k2("verify", report["job_id"], "--json")
        result = json.loads(done.stdout)
        assert done.returncode == 1 and result["ok"] is False
        [stalled] = [p for p in result["stalled_partitions"] if p["topic"] == "market.trades.raw"]
        assert stalled["stable_offset"] < stalled["end_offset"]
        bhp = next(f for f in result["files"] if f["path"] == "trades/7078.csv")
        assert (bhp["found_published"], bhp["ok"]) == (0, False)
        assert "committed reading stops at offset" in run_k2("verify", report["job_id"]).stdout
    finally:
        blocker.abort_transaction(30)
    again = run_k2("verify", report["job_id"], "--json")
    assert again.returncode == 0, again.stdout
    assert json.loads(again.stdout)["stalled_partitions"] == []


def test_unknown_job_is_refused(stack) -> None:  # type: ignore[no-untyped-def]
    done = run_k2("status", "no-such-job")
    assert done.returncode == 2
    assert "no-such-job" in done.stderr


def test_unreachable_redis_fails_fast_with_a_reason(stack) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    done = run_k2("submit", "sample", "--json", env={"K2_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 3
    assert "Redis" in done.stderr and done.stdout == ""
    assert time.monotonic() - started < 30


def test_unreachable_kafka_fails_fast_and_enqueues_nothing(stack, ledger) -> None:  # type: ignore[no-untyped-def]
    before = ledger.recent_jobs(1000)
    started = time.monotonic()
    done = run_k2("submit", "sample", "--json", "--again", env={"K2_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert done.returncode == 4
    assert "Kafka" in done.stderr
    assert time.monotonic() - started < 30
    assert ledger.recent_jobs(1000) == before


def test_stack_status_lists_every_process(stack, settings) -> None:  # type: ignore[no-untyped-def]
    done = run_k2("stack", "status", "--json", check=True)
    status = json.loads(done.stdout)
    assert status["redis"]["pid"] and status["kafka"]["pid"] and status["flower"]["pid"]
    assert status["brokers"] == [{"id": 1, "pid": status["kafka"]["pid"], "bootstrap": settings.kafka_bootstrap}]
    assert len(status["workers"]) == 2 and all(w["pid"] for w in status["workers"])
    assert status["flower"]["url"].endswith(f":{settings.flower_port}")


def test_a_job_in_redis_is_its_files_and_one_record_per_task(stack, ledger) -> None:  # type: ignore[no-untyped-def]
    """What a worker reads to run a task is that task's record alone (its chunks and the task after it in its key):
    its memory does not grow with the job's files. The whole plan, for reconciling, comes back whole."""
    from k2jobs.jobs.submit import new_job_id
    from k2jobs.sources.local import plan_job
    from k2jobs.store.keys import RUNNING_KEY

    plan = plan_job(DATA_ROOT, DATA_ROOT / "sample", 5_000, task_rows=20_000)
    job_id = new_job_id()
    ledger.create_job(job_id, plan, {"chunk_rows": 5_000, "ordered": True})
    ledger.redis.srem(RUNNING_KEY, job_id)  # recorded, never enqueued: no supervisor must take it for a lost job
    tasks = plan.task_plans()
    assert ledger.task_plans(job_id, [t.index for t in tasks]) == tasks
    shared = next(t for t in tasks if len(t.chunks) > 1)  # the sample's small files share one task
    assert ledger.task_plans(job_id, [shared.chunks[1].index, len(plan.chunks)]) == [None, None]
    assert ledger.task_plans("no-such-job", [0]) == [None]
    again = ledger.plan(job_id)
    assert (again.files, again.chunks, again.tasks) == (plan.files, plan.chunks, plan.tasks)
    biggest = max(len(r) for r in ledger.redis.hvals(f"k2:job:{job_id}:tasks"))
    assert biggest * 4 < len(orjson.dumps(plan.to_dict()))  # what one task reads is a small part of the plan
