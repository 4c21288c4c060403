"""`.csv.gz` input: cut into chunks like the same plain file, each chunk read from its point in the gzip index;
damaged or replaced files refused with a reason; the real stack loads gzip and plain files mixed, exactly."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from k2jobs.errors import ChunkChanged
from k2jobs.sources.local import plan_job

from .conftest import DATA_ROOT, run_k2
from .reference import assert_sample_values, key_order_violations

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
BHP_TRADES = (SAMPLE / "trades" / "7078.csv").read_bytes()


def first_lines(count: int) -> bytes:
    return b"".join(BHP_TRADES.splitlines(keepends=True)[:count])


TILES = 3  # 274,893 rows, 10.5 MB decompressed: three seek points of the gzip index (one per 4 MiB)


def make_input(root: Path, files: dict[str, bytes], name: str = "job") -> Path:
    """A job directory `name` under `root` with the sample's company_info and `files` (`.gz` names gzipped)."""
    job = root / name
    (job / "reference-data").mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE / "reference-data" / "company_info.csv", job / "reference-data" / "company_info.csv")
    for name, data in files.items():
        (job / name).parent.mkdir(parents=True, exist_ok=True)
        (job / name).write_bytes(gzip.compress(data, 1) if name.endswith(".gz") else data)
    return job


def test_a_gzip_file_is_cut_and_read_exactly_like_the_same_plain_file(tmp_path: Path) -> None:
    from k2jobs.sources.choose import read_chunk

    data = BHP_TRADES * TILES
    plain = plan_job(tmp_path / "a", make_input(tmp_path / "a", {"trades/7078.csv": data}), 40_000)
    packed = plan_job(tmp_path / "b", make_input(tmp_path / "b", {"trades/7078.csv.gz": data}), 40_000)
    fields = [(c.start, c.end, c.first_line, c.rows, c.crc32) for c in plain.chunks]
    assert [(c.start, c.end, c.first_line, c.rows, c.crc32) for c in packed.chunks] == fields
    assert len(packed.chunks) == 7 and {c.compression for c in packed.chunks} == {"gzip"}
    assert packed.files[0].rows == 91_631 * TILES and packed.files[0].crc32 == plain.files[0].crc32
    [index] = packed.gzip_indexes.values()
    assert len(index) < 200_000  # three seek points of 32 KiB each, not the file
    for chunk, twin in zip(packed.chunks, plain.chunks, strict=True):
        expected = read_chunk(tmp_path / "a", twin)
        assert read_chunk(tmp_path / "b", chunk, gzip_indexes=packed.gzip_indexes) == expected
    # Without the index (a plan kept by Redis lost it), a chunk is still read right: from the file's start.
    assert read_chunk(tmp_path / "b", packed.chunks[-1]) == read_chunk(tmp_path / "a", plain.chunks[-1])


def test_gzip_and_plain_files_mix_and_a_key_keeps_its_files_in_name_order(tmp_path: Path) -> None:
    job = make_input(
        tmp_path,
        {"trades/7078.csv.gz": first_lines(100), "trades/7181.csv": first_lines(10), "quotes/3153.csv.gz": b""},
    )
    plan = plan_job(tmp_path, job, 1000)
    assert [(f.path, f.rows) for f in plan.files] == [
        ("quotes/3153.csv.gz", 0),
        ("trades/7078.csv.gz", 100),
        ("trades/7181.csv", 10),
    ]


def test_a_truncated_or_corrupt_gzip_is_planned_as_one_failing_chunk_alone_and_the_other_files_load(
    tmp_path: Path,
) -> None:
    """Nothing of a damaged file loads (not even before the damage: a repaired file then loads whole, once); it
    fails in a task of its own, so the small files it would have shared a transaction with still load."""
    from k2jobs.load.chunk import Attempt, process_chunk

    whole = gzip.compress(BHP_TRADES, 1)
    damage = {"truncated": whole[: len(whole) // 2], "corrupt": whole[:5000] + b"\0" * 99 + whole[5099:]}
    for name, damaged in damage.items():
        job = make_input(tmp_path / name, {"trades/3153.csv": first_lines(11), "trades/7181.csv": first_lines(10)})
        (job / "trades" / "7078.csv.gz").write_bytes(damaged)
        plan = plan_job(tmp_path / name, job, 10_000, task_rows=200_000)
        [bad] = [c for c in plan.chunks if c.path == "trades/7078.csv.gz"]
        assert bad.rows == 0 and "trades/7078.csv.gz: gzip data is corrupt or truncated" in bad.damaged, name
        assert "nothing of this file was loaded" in bad.damaged
        assert plan.task_chunks(plan.task_of(bad.index)) == [bad]  # a task of its own
        good = [c.index for c in plan.chunks if c.path != "trades/7078.csv.gz"]
        assert plan.tasks_of(good) == [good[0]]  # the two small files still share one
        result = process_chunk(Attempt("job", bad, rerun=False), tmp_path / name, 1000, *_no_services())
        assert result["status"] == "failed" and result["error"] == bad.damaged


def _no_services() -> tuple[object, object, object]:
    """A ledger that records, and Kafka clients that must not be called: a damaged chunk needs neither."""

    class Ledger:
        def __init__(self) -> None:
            self.results: dict[int, dict[str, object]] = {}

        def chunk_results(self, job: str, indexes: list[int]) -> list[object]:
            return [self.results.get(i) for i in indexes]

        def record_results(self, job: str, results: list[dict[str, object]]) -> None:
            self.results.update({int(r["chunk"]): r for r in results})  # type: ignore[call-overload]

    def no_kafka(*args: object) -> None:
        raise AssertionError("a damaged chunk opened a Kafka transaction")

    return Ledger(), object(), no_kafka


def test_a_gzip_file_replaced_after_submit_fails_its_chunks_with_the_reason(tmp_path: Path) -> None:
    from k2jobs.sources.choose import read_chunk

    job = make_input(tmp_path, {"trades/7078.csv.gz": BHP_TRADES})
    plan = plan_job(tmp_path, job, 30_000)
    path = job / "trades" / "7078.csv.gz"
    original = path.read_bytes()
    path.write_bytes(gzip.compress(BHP_TRADES.replace(b"03/10/2014", b"04/10/2014"), 1))
    with pytest.raises(ChunkChanged, match=r"trades/7078.csv.gz changed after submit \(size"):
        read_chunk(tmp_path, plan.chunks[0], gzip_indexes=plan.gzip_indexes)
    # The same size, damaged inside: the chunk is refused (decompression fails, or its checksum differs).
    path.write_bytes(original[: len(original) // 2] + bytes(64) + original[len(original) // 2 + 64 :])
    with pytest.raises(ChunkChanged, match=r"trades/7078.csv.gz.*(corrupt or truncated|checksum)"):
        for chunk in plan.chunks:
            read_chunk(tmp_path, chunk, gzip_indexes=plan.gzip_indexes)


# -- the real stack ------------------------------------------------------------------------------------------------
def test_the_sample_with_gzip_and_plain_files_mixed_loads_field_by_field(stack, read_back) -> None:  # type: ignore[no-untyped-def]
    root = DATA_ROOT / "sample-gz"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(SAMPLE, root)
    for name in ("trades/7078.csv", "quotes/7181.csv", "trades/3153.csv"):
        (root / f"{name}.gz").write_bytes(gzip.compress((root / name).read_bytes()))
        (root / name).unlink()
    started_ms = int(time.time() * 1000)
    done = run_k2("submit", "sample-gz", "--chunk-rows", "20000", "--json", "--again", timeout=600)
    report = json.loads(done.stdout)
    assert done.returncode == 0, report
    assert report["totals"] == {"rows": 170_332, "published": 170_332, "rejected": 0}
    rows = {f["path"]: f["published"] for f in report["files"]}
    assert (
        rows["trades/7078.csv.gz"] == 91_631 and rows["quotes/7181.csv.gz"] == 549 and rows["trades/3153.csv.gz"] == 11
    )
    assert_sample_values(read_back(report["job_id"]), set(rows), started_ms)


def test_a_big_gzip_file_in_chunks_loads_once_in_order_with_a_worker_killed(stack, ledger, read_back) -> None:  # type: ignore[no-untyped-def]
    """One .csv.gz of 549,786 rows in 6 chunks, each a task (long enough to be caught half sent: a chunk of
    30,000 rows takes 0.13 s); worker-1 killed -9 while a chunk is half sent."""
    from .test_faults import mid_job, stack_pid, wait_until

    tiles = 6
    rows = 91_631 * tiles
    shutil.rmtree(DATA_ROOT / "big-gz", ignore_errors=True)
    make_input(DATA_ROOT, {"trades/7078.csv.gz": BHP_TRADES * tiles}, name="big-gz")
    worker = stack_pid("worker-1")
    options = ("--no-wait", "--json", "--again", "--chunk-rows", "100000")
    done = run_k2("submit", "big-gz", *options, env={"K2_TASK_ROWS": "100000"})
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["job_id"]
    assert len(ledger.plan(job_id).chunks) == 6
    wait_until(mid_job(ledger, job_id), what="a gzip chunk in progress")
    os.killpg(worker, signal.SIGKILL)
    assert run_k2("stack", "up", "--workers", "2").returncode == 0
    finished = run_k2("status", job_id, "--wait", "--json", timeout=600)
    report = json.loads(finished.stdout)
    assert finished.returncode == 0, report
    assert report["totals"] == {"rows": rows, "published": rows, "rejected": 0}
    messages = read_back(job_id)
    sources = Counter(m.source for m in messages)
    assert len(sources) == rows and max(sources.values()) == 1
    assert key_order_violations(messages) == []


def test_a_damaged_gzip_fails_the_job_naming_it_and_the_other_files_load_once(stack, read_back) -> None:  # type: ignore[no-untyped-def]
    whole = gzip.compress(BHP_TRADES, 1)
    shutil.rmtree(DATA_ROOT / "damaged-gz", ignore_errors=True)
    job = make_input(DATA_ROOT, {"trades/7181.csv": (SAMPLE / "trades" / "7181.csv").read_bytes()}, name="damaged-gz")
    (job / "trades" / "7078.csv.gz").write_bytes(whole[: len(whole) // 2])
    done = run_k2("submit", "damaged-gz", "--json", "--again", timeout=300)
    report = json.loads(done.stdout)
    assert done.returncode == 1 and report["status"] == "failed", report
    assert "warning: trades/7078.csv.gz: gzip data is corrupt or truncated" in done.stderr
    [failure] = report["failures"]
    assert failure["path"] == "trades/7078.csv.gz" and "nothing of this file was loaded" in failure["error"]
    published = {f["path"]: f["published"] for f in report["files"]}
    assert published == {"trades/7078.csv.gz": 0, "trades/7181.csv": 232}
    sources = Counter(m.source for m in read_back(report["job_id"]))
    assert len(sources) == 232 and max(sources.values()) == 1
    assert {s.rsplit(":", 1)[0] for s in sources} == {"trades/7181.csv"}
