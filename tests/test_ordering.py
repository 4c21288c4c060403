"""Per-key order on the real stack: each key's messages in file order, files one after the other."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from .conftest import DATA_ROOT, SAMPLE, chunk_consumers_paused, run_k2
from .reference import key_order_violations

BHP_TRADES, BHP_QUOTES = 91_631, 77_849
COPIES = {"trades": ["7078", "9001", "9002"], "quotes": ["7078", "9001"]}


def write_input(root: Path, bad_every: int = 0) -> dict[str, int]:
    """Several files per key (company ids mapped to BHP), so one key's rows come from several files."""
    (root / "reference-data").mkdir(parents=True, exist_ok=True)
    (root / "reference-data" / "company_info.csv").write_text(
        "company_id,symbol\n" + "".join(f"{c},BHP\n" for c in COPIES["trades"])
    )
    rows = {}
    for kind, companies in COPIES.items():
        (root / kind).mkdir(exist_ok=True)
        lines = (SAMPLE / kind / "7078.csv").read_bytes().splitlines(keepends=True)
        for n, company in enumerate(companies):
            copy = list(lines)
            if bad_every and n == 1:
                copy[::bad_every] = [b"not,a,row\r\n"] * len(copy[::bad_every])
            (root / kind / f"{company}.csv").write_bytes(b"".join(copy))
            rows[f"{kind}/{company}.csv"] = len(copy)
    return rows


def submit(directory: Path, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    done = run_k2("submit", str(directory.relative_to(DATA_ROOT)), "--json", "--again", *args, timeout=600)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_each_key_reads_back_in_file_order_with_many_more_chunks_than_workers(stack, workdir, read_back) -> None:  # type: ignore[no-untyped-def]
    rows = write_input(workdir, bad_every=5000)
    code, report = submit(workdir, "--chunk-rows", "20000")  # 24 chunks, 2 keys, 2 workers
    assert code == 1, report  # rejected rows make the job exit 1, and they keep their order too
    assert report["totals"]["rows"] == sum(rows.values())
    assert report["totals"]["published"] + report["totals"]["rejected"] == sum(rows.values())
    assert report["totals"]["rejected"] == -(-BHP_TRADES // 5000) + -(-BHP_QUOTES // 5000)
    assert [f for f in report["failures"] if f["chunk"] is not None] == []
    messages = read_back(report["job_id"])
    sources = Counter(m.source for m in messages)
    assert len(sources) == sum(rows.values()) and max(sources.values()) == 1
    assert {m.topic for m in messages} == {
        "market.trades.raw",
        "market.quotes.raw",
        "market.trades.dlq",
        "market.quotes.dlq",
    }
    assert key_order_violations(messages) == []


def test_unordered_loads_everything_once(stack, workdir, read_back) -> None:  # type: ignore[no-untyped-def]
    rows = write_input(workdir)
    code, report = submit(workdir, "--chunk-rows", "20000", "--unordered")
    assert code == 0, report
    assert report["totals"] == {"rows": sum(rows.values()), "published": sum(rows.values()), "rejected": 0}
    sources = Counter(m.source for m in read_back(report["job_id"]))
    assert len(sources) == sum(rows.values()) and max(sources.values()) == 1


def test_a_failed_chunk_holds_back_the_rest_of_its_key_and_resume_goes_on_in_order(
    stack, workdir, ledger, read_back
) -> None:  # type: ignore[no-untyped-def]

    rows = write_input(workdir)
    target = workdir / "trades" / "9001.csv"
    original, stat = target.read_bytes(), target.stat()
    with chunk_consumers_paused():
        code, reply = submit(workdir, "--chunk-rows", "20000", "--no-wait")
        assert code == 0, reply
        job_id = reply["job_id"]
        plan = ledger.plan(job_id)
        broken = next(c for c in plan.chunks if c.path == "trades/9001.csv" and c.first_line > 1)
        changed = bytearray(original)
        changed[broken.start] = ord("1") if changed[broken.start] != ord("1") else ord("0")
        target.write_bytes(bytes(changed))  # same size, same time: only the chunk's checksum tells
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    done = run_k2("status", job_id, "--wait", "--json", timeout=600)
    report = json.loads(done.stdout)
    assert done.returncode == 1 and report["status"] == "failed"
    failed = {f["chunk"]: f["error"] for f in report["failures"] if f["chunk"] is not None}
    trades_key = next(group for group in plan.key_chunks() if broken.index in group)
    later = trades_key[trades_key.index(broken.index) + 1 :]
    # A task commits all its chunks or none: the broken chunk's task-mates fail with it (20,000-row chunks,
    # tasks of up to K2_TASK_ROWS = 200,000 rows), and every later chunk of the key is held back.
    task_mates = plan.tasks.get(plan.task_of(broken.index), [broken.index])
    assert len(task_mates) > 1
    assert "checksum" in failed[broken.index]
    assert set(failed) == {*task_mates, *later}
    assert all(f"chunk {broken.index}" in failed[i] for i in set(failed) - {broken.index})
    quotes = next(f for f in report["files"] if f["path"] == "quotes/9001.csv")
    assert quotes["published"] == rows["quotes/9001.csv"]  # other keys load in full

    target.write_bytes(original)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    resumed = run_k2("resume", job_id, "--json", timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["totals"]["published"] == sum(rows.values())
    messages = read_back(job_id)
    sources = Counter(m.source for m in messages)
    assert len(sources) == sum(rows.values()) and max(sources.values()) == 1
    assert key_order_violations(messages) == []


def test_loading_the_same_content_twice_needs_again(stack, workdir, read_back) -> None:  # type: ignore[no-untyped-def]
    (workdir / "trades").mkdir()
    (workdir / "reference-data").mkdir()
    (workdir / "reference-data" / "company_info.csv").write_text("company_id,symbol\n7078,BHP\n")
    unique = f"03/10/2014,07:57:14.754,{time.time_ns() % 10**6}.5,20000,3,,\r\n".encode()  # content no test had
    (workdir / "trades" / "7078.csv").write_bytes(unique)
    relative = str(workdir.relative_to(DATA_ROOT))
    first = run_k2("submit", relative, "--json")
    assert first.returncode == 0, first.stderr
    job_id = json.loads(first.stdout)["job_id"]

    again = run_k2("submit", relative, "--json")
    assert again.returncode == 2 and again.stdout == ""
    assert job_id in again.stderr and "trades/7078.csv" in again.stderr and "--again" in again.stderr

    forced = run_k2("submit", relative, "--json", "--again")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["job_id"] != job_id

    (workdir / "trades" / "7078.csv").write_bytes(unique * 2)  # grown: a row appended
    grown = run_k2("submit", relative, "--json")
    assert grown.returncode == 0, grown.stderr
    report = json.loads(grown.stdout)
    assert report["totals"]["published"] == 1  # only the new line: the old one was published already
    assert [m.source for m in read_back(report["job_id"])] == ["trades/7078.csv:2"]
