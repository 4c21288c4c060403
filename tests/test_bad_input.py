"""Bad input through the real stack: every row published or dead-lettered, refusals publish nothing."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from .conftest import DATA_ROOT, PORT_SHIFT, chunk_consumers_paused, run_k2

CORPUS = Path(__file__).resolve().parent / "corpus"
BAD_TRADE_LINES = {
    4: "expected 7 fields",
    5: "date",
    6: "time",
    7: "price",
    8: "price",
    9: "volume",
    10: "UTF-8",
    13: "price",
}
BAD_QUOTE_LINES = {2: "ask_price", 3: "expected 6 fields", 4: "expected 6 fields", 5: "bid_price"}


@pytest.fixture()
def bad_rows(workdir: Path) -> Path:
    shutil.copytree(CORPUS / "bad-rows", workdir / "bad-rows")
    return workdir / "bad-rows"


def submit(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_k2("submit", str(directory.relative_to(DATA_ROOT)), "--json", "--again", *args)


def test_bad_rows_are_dead_lettered_and_good_rows_published_once(stack, settings, bad_rows, read_back) -> None:  # type: ignore[no-untyped-def]
    done = submit(bad_rows, "--chunk-rows", "5")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "failed"
    assert report["totals"] == {"rows": 21, "published": 9, "rejected": 12}
    files = {f["path"]: f for f in report["files"]}
    assert (files["trades/7078.csv"]["published"], files["trades/7078.csv"]["rejected"]) == (4, 8)
    assert (files["quotes/7078.csv"]["published"], files["quotes/7078.csv"]["rejected"]) == (2, 4)
    assert (files["trades/7181.csv"]["published"], files["trades/7181.csv"]["rejected"]) == (3, 0)
    assert files["trades/7078.csv"]["reasons"][0].startswith("line 4: expected 7 fields")
    assert {f["path"] for f in report["failures"]} == {"trades/7078.csv", "quotes/7078.csv"}

    sources: Counter[str] = Counter()
    dead: dict[str, dict] = {}  # type: ignore[type-arg]
    for msg in read_back(report["job_id"]):
        sources[msg.source] += 1
        if msg.topic.endswith(".dlq"):
            dead[msg.source] = orjson.loads(msg.value)
            assert msg.topic == f"market.{msg.path.split('/')[0]}.dlq"
    assert max(sources.values()) == 1
    assert sum(sources.values()) == 21
    expected_dead = {f"trades/7078.csv:{n}": w for n, w in BAD_TRADE_LINES.items()}
    expected_dead |= {f"quotes/7078.csv:{n}": w for n, w in BAD_QUOTE_LINES.items()}
    assert set(dead) == set(expected_dead)
    for source, word in expected_dead.items():
        value = dead[source]
        assert word in value["error"], (source, value)
        assert f"{value['file']}:{value['line']}" == source
    latin = dead["trades/7078.csv:10"]
    assert latin["raw_encoding"] == "base64"
    assert base64.b64decode(latin["raw"]) == b"03/10/2014,10:05:51.000,37.53,100,3,\xe9X,"
    assert dead["trades/7078.csv:7"]["raw"] == "03/10/2014,10:05:48.000,1e3,100,3,,"
    assert "trades/7078.csv:14" in sources  # the last line had no line ending
    assert "trades/7078.csv:3" not in sources and "trades/7078.csv:12" not in sources  # blank


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing-dir", "does not exist"),
        ("no-csv", "no CSV files"),
        ("no-company-info", "company_info.csv is missing"),
        ("bad-company-info", "malformed"),
        ("unknown-id", "'9999' is not a company id"),
        ("unknown-folder", "options is a folder"),
        ("outside-root", "outside the data root"),
    ],
)
def test_refusals_exit_2_with_a_reason_and_publish_nothing(stack, ledger, bad_rows, breakage, message) -> None:  # type: ignore[no-untyped-def]
    target = bad_rows
    if breakage == "missing-dir":
        target = bad_rows / "nope"
    elif breakage == "no-csv":
        shutil.rmtree(bad_rows / "trades")
        shutil.rmtree(bad_rows / "quotes")
    elif breakage == "no-company-info":
        (bad_rows / "reference-data" / "company_info.csv").unlink()
    elif breakage == "bad-company-info":
        (bad_rows / "reference-data" / "company_info.csv").write_text("nothing,useful\n1,2\n")
    elif breakage == "unknown-id":
        (bad_rows / "trades" / "9999.csv").write_text("03/10/2014,10:00:00,1,1,0,,\r\n")
    elif breakage == "unknown-folder":
        (bad_rows / "options").mkdir()
    before = ledger.recent_jobs(10_000)
    if breakage == "outside-root":
        done = run_k2("submit", str(bad_rows), "--json", env={"K2_DATA_ROOT": str(bad_rows / "trades")})
    else:
        done = run_k2("submit", str(target), "--json") if target.is_absolute() else submit(target)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""
    assert ledger.recent_jobs(10_000) == before


def test_unknown_files_are_skipped_when_asked(stack, bad_rows) -> None:  # type: ignore[no-untyped-def]
    (bad_rows / "options").mkdir()
    done = submit(bad_rows, "--skip-unknown")
    assert done.returncode == 1  # the corpus's bad rows, not a refusal
    assert json.loads(done.stdout)["totals"]["rows"] == 21


def test_file_changed_after_submit_fails_its_chunk_and_publishes_none_of_it(
    stack, settings, workdir, read_back
) -> None:  # type: ignore[no-untyped-def]

    (workdir / "trades").mkdir()
    (workdir / "reference-data").mkdir()
    (workdir / "reference-data" / "company_info.csv").write_text("company_id,symbol\n7078,BHP\n")
    data = workdir / "trades" / "7078.csv"
    data.write_bytes(b"03/10/2014,10:00:00.000,1.5,1,0,,\r\n" * 10)
    with chunk_consumers_paused():  # hold the chunks in the queue
        done = submit(workdir, "--no-wait")
        job_id = json.loads(done.stdout)["job_id"]
        time.sleep(0.01)
        data.write_bytes(b"03/10/2014,10:00:00.000,9.9,1,0,,\r\n" * 10)
    waited = run_k2("status", job_id, "--wait", "--json")
    assert waited.returncode == 1
    report = json.loads(waited.stdout)
    assert report["status"] == "failed"
    assert report["totals"]["published"] == 0
    assert "changed after submit" in report["failures"][0]["error"]
    assert list(read_back(job_id)) == []


def test_worker_refuses_a_job_whose_plan_names_a_path_outside_the_data_root(stack, ledger) -> None:  # type: ignore[no-untyped-def]
    """Task messages carry ids; a plan written into Redis by someone else still cannot make a worker read /etc."""
    from k2jobs.app import app
    from k2jobs.jobs.submit import new_job_id
    from k2jobs.plan.model import ChunkPlan, FilePlan, JobPlan

    chunk = {
        "index": 0,
        "path": "trades/7078.csv",
        "data_path": "../../../../etc/passwd",
        "kind": "trades",
        "symbol": "BHP",
        "company_id": 7078,
        "start": 0,
        "end": 10,
        "first_line": 1,
        "rows": 1,
        "crc32": 0,
        "file_size": 10,
    }
    job_id = new_job_id()
    rogue = JobPlan("rogue", [FilePlan("trades/7078.csv", "trades", "BHP", 7078, 1, [0])], [ChunkPlan(**chunk)])
    ledger.create_job(job_id, rogue, {"ordered": True})
    result = app.send_task("k2jobs.process_chunk", args=(job_id, 0)).get(timeout=60)
    assert result["status"] == "failed"
    assert "outside the data root" in result["error"]


def test_password_protected_redis(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = 16380 + PORT_SHIFT  # beside the slot's own Redis, so suites in other slots do not meet here
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            "s3cret",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            if run_k2("jobs", env={"K2_REDIS_URL": f"redis://:s3cret@127.0.0.1:{port}/0"}).returncode == 0:
                break
            time.sleep(0.1)
        ok = run_k2("status", "nope", env={"K2_REDIS_URL": f"redis://:s3cret@127.0.0.1:{port}/0"})
        assert ok.returncode == 2 and "no job 'nope'" in ok.stderr  # connected and asked
        wrong = run_k2("status", "nope", env={"K2_REDIS_URL": f"redis://:wrong@127.0.0.1:{port}/0"})
        assert wrong.returncode == 3 and "Redis" in wrong.stderr
    finally:
        server.terminate()
        server.wait(10)


def test_a_local_time_skipped_by_daylight_saving_is_dead_lettered(stack, workdir, read_back) -> None:  # type: ignore[no-untyped-def]
    """10/05/2014 02:30 never happened in Sydney (clocks jumped from 02:00 to 03:00): rejected, not moved."""
    (workdir / "trades").mkdir()
    (workdir / "reference-data").mkdir()
    (workdir / "reference-data" / "company_info.csv").write_text("company_id,symbol\n7078,BHP\n")
    (workdir / "trades" / "7078.csv").write_bytes(
        b"10/05/2014,01:59:59.999,37.5,100,0,,\r\n"
        b"10/05/2014,02:30:00.000,37.5,100,0,,\r\n"
        b"10/05/2014,03:30:00.000,37.5,100,0,,\r\n"
        b"04/06/2014,02:30:00.000,37.5,100,0,,\r\n"  # the repeated hour: its first occurrence
    )
    done = submit(workdir)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["totals"] == {"rows": 4, "published": 3, "rejected": 1}
    reason = "local time 10/05/2014 02:30:00.000 does not exist in Australia/Sydney"
    assert report["files"][0]["reasons"][0].startswith(f"line 2: {reason}")
    messages = {msg.source: msg for msg in read_back(report["job_id"])}
    dead = messages["trades/7078.csv:2"]
    assert dead.topic == "market.trades.dlq"
    assert orjson.loads(dead.value)["error"].startswith(reason)
    stamps = {line: orjson.loads(messages[f"trades/7078.csv:{line}"].value)["exchange_timestamp"] for line in (1, 3, 4)}
    assert stamps == {1: 1412438399999, 3: 1412440200000, 4: 1396711800000}
