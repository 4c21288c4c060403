"""Finding files and cutting them into chunks: row counts, line numbers, refusals; no services."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import k2jobs.sources.cutting as cutting
from k2jobs.errors import InputError, UnsafePathError
from k2jobs.sources.cutting import cut_ranges
from k2jobs.sources.local import plan_job

from .reference import count_rows

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
TRADE = b"03/10/2014,10:05:44.516,37.51,40000,3,X,"
# How planning finds line endings and blank lines: compiled (_fastrows) and in Python, which must agree.
SCANS = [cutting.scan_lines, cutting._scan_lines_python]


def make_dir(root: Path, files: dict[str, bytes], company_info: str | None = "company_id,symbol\n7078,BHP\n") -> Path:
    job = root / "job"
    for relative, data in files.items():
        (job / relative).parent.mkdir(parents=True, exist_ok=True)
        (job / relative).write_bytes(data)
    if company_info is not None:
        (job / "reference-data").mkdir(parents=True, exist_ok=True)
        (job / "reference-data" / "company_info.csv").write_text(company_info)
    return job


def test_sample_plan_counts_every_row() -> None:
    plan = plan_job(SAMPLE.parent.parent.parent, SAMPLE, 25_000)
    rows = {f.path: f.rows for f in plan.files}
    assert rows["trades/7078.csv"] == 91_631 and rows["quotes/7078.csv"] == 77_849
    assert plan.rows == 170_332
    bhp = [c for c in plan.chunks if c.path == "trades/7078.csv"]
    assert [c.rows for c in bhp] == [25_000, 25_000, 25_000, 16_631]
    assert [c.first_line for c in bhp] == [1, 25_001, 50_001, 75_001]
    assert all(a.end == b.start for a, b in zip(bhp, bhp[1:], strict=False))
    assert bhp[-1].end == (SAMPLE / "trades" / "7078.csv").stat().st_size


def test_chunks_start_and_end_on_line_boundaries(tmp_path: Path) -> None:
    data = b"".join(TRADE + b"\r\n" for _ in range(10))
    job = make_dir(tmp_path, {"trades/7078.csv": data})
    plan = plan_job(tmp_path, job, 3)
    assert [c.rows for c in plan.chunks] == [3, 3, 3, 1]
    for chunk in plan.chunks:
        piece = data[chunk.start : chunk.end]
        assert piece.endswith(b"\r\n") and piece.startswith(b"03/")


def test_before_cutting_is_told_how_many_files_before_any_is_cut(tmp_path: Path) -> None:
    """submit waits there for Celery's import when the files are many (client.MANY_FILES)."""
    job = make_dir(tmp_path, {"trades/7078.csv": TRADE + b"\r\n", "quotes/7078.csv": b""})
    told: list[int] = []

    def before_cutting(files: int) -> None:
        told.append(files)
        (job / "trades" / "7078.csv").write_bytes(TRADE + b"\r\n" + TRADE + b"\r\n")  # cut after this call

    plan = plan_job(tmp_path, job, 25_000, before_cutting=before_cutting)
    assert told == [2] and plan.rows == 2


def test_small_files_share_tasks_of_about_equal_rows(tmp_path: Path) -> None:
    """Six companies of 10 rows, tasks of up to 40 rows: two tasks of 30, not 40 and 20 (workers end together)."""
    info = "company_id,symbol\n" + "".join(f"{n},S{n}\n" for n in range(1, 7))
    job = make_dir(tmp_path, {f"trades/{n}.csv": (TRADE + b"\r\n") * 10 for n in range(1, 7)}, info)
    plan = plan_job(tmp_path, job, 25_000, task_rows=40)
    assert sorted(sum(plan.chunks[i].rows for i in members) for members in plan.tasks.values()) == [30, 30]
    assert [plan.chunks[i].path for m in plan.tasks.values() for i in m] == [f"trades/{n}.csv" for n in range(1, 7)]


def test_small_file_is_one_chunk(tmp_path: Path) -> None:
    job = make_dir(tmp_path, {"trades/7078.csv": TRADE + b"\r\n"})
    plan = plan_job(tmp_path, job, 25_000)
    assert len(plan.chunks) == 1 and plan.chunks[0].rows == 1


@pytest.mark.parametrize(
    ("data", "rows"),
    [
        (b"a\r\nb\r\n", 2),
        (b"a\nb\n", 2),
        (b"a\r\nb", 2),  # last line without a line ending still counts
        (b"a\r\n\r\n\r\nb\r\n", 2),  # blank lines do not
        (b"\r\na\r\n   \r\nb\r\n \t\r\n", 2),
        (b"", 0),
        (b"\n\n", 0),
    ],
)
@pytest.mark.parametrize("scan", SCANS)
def test_a_file_cut_counts_its_non_blank_lines(data: bytes, rows: int, scan, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cutting, "scan_lines", scan)
    assert count_rows(data) == rows
    assert sum(r for *_, r in cut_ranges(io.BufferedReader(io.BytesIO(data)), 2, 3)) == rows  # type: ignore[arg-type]


def test_bom_is_skipped_and_line_numbers_stay_true(tmp_path: Path) -> None:
    job = make_dir(tmp_path, {"trades/7078.csv": b"\xef\xbb\xbf" + TRADE + b"\r\n" + TRADE + b"\r\n"})
    [chunk] = plan_job(tmp_path, job, 100).chunks
    assert chunk.start == 3 and chunk.first_line == 1 and chunk.rows == 2


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"x", b"", b"  ", b"yy,z", b"\r"]), max_size=60),
    st.integers(1, 7),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
    st.integers(1, 40),
)
def test_cutting_never_loses_or_doubles_a_line(lines, per_chunk, ending, trailing, block) -> None:  # type: ignore[no-untyped-def]
    data = ending.join(lines) + (ending if trailing and lines else b"")
    for scan in SCANS:  # the compiled scan and the Python one give the same cut
        cutting.scan_lines = scan
        try:
            # Small read blocks: chunks and lines straddle the blocks the file is read in.
            pieces = list(cut_ranges(io.BufferedReader(io.BytesIO(data)), per_chunk, block))  # type: ignore[arg-type]
        finally:
            cutting.scan_lines = SCANS[0]
        assert b"".join(p for _, p, *_ in pieces) == data
        assert sum(rows for *_, rows in pieces) == count_rows(data)
        for offset, piece, first_line, endings, rows in pieces:
            assert data[offset : offset + len(piece)] == piece
            assert first_line == data[:offset].count(b"\n") + 1
            assert endings == piece.count(b"\n") <= per_chunk
            assert rows == count_rows(piece)
            assert piece.endswith(b"\n") or offset + len(piece) == len(data)


def test_cutting_follows_line_lengths_that_change_along_the_file() -> None:
    # Long lines first, then short ones: the estimate from the first chunk overshoots by thousands of lines.
    data = b"".join([b"x" * 199 + b"\n"] * 100 + [b"y\n"] * 5000 + [b"z" * 99 + b"\n"] * 300)
    pieces = list(cut_ranges(io.BufferedReader(io.BytesIO(data)), 100, 4096))  # type: ignore[arg-type]
    assert [endings for _, _, _, endings, _ in pieces] == [100] * 54
    assert b"".join(piece for _, piece, *_ in pieces) == data
    assert all(piece.count(b"\n") == 100 for _, piece, *_ in pieces)


# -- refusals ----------------------------------------------------------------------------------------
def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        plan_job(tmp_path, tmp_path / "nope", 10)


def test_no_csv_files_is_refused(tmp_path: Path) -> None:
    job = make_dir(tmp_path, {})
    with pytest.raises(InputError, match="no CSV files"):
        plan_job(tmp_path, job, 10)


@pytest.mark.parametrize(
    ("company_info", "message"),
    [
        (None, "company_info.csv is missing"),
        ("id,name\n1,x\n", "malformed"),
        ("company_id,symbol\nabc,BHP\n", "malformed"),
    ],
)
def test_bad_company_info_is_refused(tmp_path: Path, company_info: str | None, message: str) -> None:
    job = make_dir(tmp_path, {"trades/7078.csv": TRADE}, company_info)
    with pytest.raises(InputError, match=message):
        plan_job(tmp_path, job, 10)


def test_unknown_company_id_names_file_and_id(tmp_path: Path) -> None:
    job = make_dir(tmp_path, {"trades/9999.csv": TRADE})
    with pytest.raises(InputError, match=r"trades/9999.csv.*'9999'"):
        plan_job(tmp_path, job, 10)


def test_unknown_folder_and_file_are_refused_unless_skipped(tmp_path: Path) -> None:
    job = make_dir(tmp_path, {"trades/7078.csv": TRADE, "trades/notes.json": b"{}"})
    with pytest.raises(InputError, match="notes.json"):
        plan_job(tmp_path, job, 10)
    make_dir(tmp_path, {"options/1.csv": TRADE})
    plan = plan_job(tmp_path, job, 10, skip_unknown=True)
    assert [f.path for f in plan.files] == ["trades/7078.csv"]
    (job / "trades" / "notes.json").unlink()
    with pytest.raises(InputError, match="options is a folder"):
        plan_job(tmp_path, job, 10)


def test_documentation_files_are_not_refused(tmp_path: Path) -> None:
    job = make_dir(tmp_path, {"trades/7078.csv": TRADE, "README.md": b"# data"})
    assert plan_job(tmp_path, job, 10).rows == 1


def test_directory_outside_data_root_is_refused(tmp_path: Path) -> None:
    job = make_dir(tmp_path, {"trades/7078.csv": TRADE})
    with pytest.raises(UnsafePathError, match="outside the data root"):
        plan_job(tmp_path / "elsewhere", job, 10)


def test_symlink_escaping_the_data_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_bytes(TRADE)
    root = tmp_path / "root"
    job = make_dir(root, {"trades/7078.csv": TRADE})
    os.symlink(outside, job / "trades" / "7181.csv")
    (job / "reference-data" / "company_info.csv").write_text("company_id,symbol\n7078,BHP\n7181,DVN\n")
    with pytest.raises(UnsafePathError, match="outside the data root"):
        plan_job(root, job, 10)


def test_files_with_only_blank_lines_hold_no_rows(tmp_path: Path) -> None:
    job = make_dir(tmp_path, {"trades/7078.csv": b"\r\n\r\n"})
    with pytest.raises(InputError, match="hold no rows"):
        plan_job(tmp_path, job, 10)


@given(
    lines=st.lists(st.sampled_from([TRADE, b"", b"  ", TRADE + b",x"]), min_size=0, max_size=40),
    bom=st.booleans(),
    crlf=st.booleans(),
    per_chunk=st.integers(min_value=1, max_value=7),
)
@settings(max_examples=60, deadline=None)
def test_file_checksum_is_the_crc32_of_the_whole_file(
    lines: list[bytes], bom: bool, crlf: bool, per_chunk: int
) -> None:
    import tempfile
    import zlib

    data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines)
    with tempfile.TemporaryDirectory() as tmp:
        job = make_dir(Path(tmp), {"trades/7078.csv": data + TRADE})  # at least one row
        [file] = plan_job(Path(tmp), job, per_chunk).files
    assert (file.size, file.crc32) == (len(data + TRADE), zlib.crc32(data + TRADE))


def test_same_content_is_the_same_whatever_the_name_or_chunk_size(tmp_path: Path) -> None:
    data = b"".join(TRADE + b"\r\n" for _ in range(10))
    job = make_dir(tmp_path, {"trades/7078.csv": data, "trades/9001.csv": data + TRADE + b"\r\n"})
    (job / "reference-data" / "company_info.csv").write_text("company_id,symbol\n7078,BHP\n9001,BHP\n")
    small, large = plan_job(tmp_path, job, 3), plan_job(tmp_path, job, 1000)
    assert [f.content for f in small.files] == [f.content for f in large.files]
    assert small.files[0].content.startswith("trades:7078:") and small.files[1].content.startswith("trades:9001:")


def test_key_groups_put_a_keys_files_in_path_order_and_chunks_in_line_order(tmp_path: Path) -> None:
    trades = b"".join(TRADE + b"\r\n" for _ in range(10))
    job = make_dir(
        tmp_path,
        {
            "trades/9001.csv": trades,
            "trades/7078.csv": trades,
            "trades/7181.csv": trades[: len(trades) // 2],
            "quotes/7078.csv": b"03/10/2014,10:05:44.516,1.5,1.6,100,200\r\n" * 4,
        },
        company_info="company_id,symbol\n7078,BHP\n9001,BHP\n7181,DVN\n",
    )
    plan = plan_job(tmp_path, job, 4)
    groups = [[(plan.chunks[i].path, plan.chunks[i].first_line) for i in group] for group in plan.key_chunks()]
    assert groups == [
        [("trades/7078.csv", 1), ("trades/7078.csv", 5), ("trades/7078.csv", 9)]
        + [("trades/9001.csv", 1), ("trades/9001.csv", 5), ("trades/9001.csv", 9)],
        [("trades/7181.csv", 1), ("trades/7181.csv", 5)],
        [("quotes/7078.csv", 1)],
    ]


def test_a_copy_of_the_data_elsewhere_with_other_times_loads_and_other_bytes_do_not(tmp_path: Path) -> None:
    """Workers on another host read a copy: change is detected by size and checksum, not modification time."""
    import shutil

    from k2jobs.errors import ChunkChanged
    from k2jobs.sources.choose import read_chunk

    submitter, worker = tmp_path / "submitter", tmp_path / "elsewhere" / "copy"
    job = make_dir(submitter, {"trades/7078.csv": b"03/10/2014,10:00:00.000,1.5,1,0,,\r\n" * 30})
    plan = plan_job(submitter, job, lines_per_chunk=10)
    shutil.copytree(submitter, worker)
    copied = worker / "job" / "trades" / "7078.csv"
    os.utime(copied, ns=(1_000_000_000, 1_000_000_000))  # other modification time, same bytes
    assert [read_chunk(worker, c) for c in plan.chunks] == [read_chunk(submitter, c) for c in plan.chunks]
    copied.write_bytes(copied.read_bytes().replace(b"1.5", b"9.9", 1))  # same size, other bytes
    with pytest.raises(ChunkChanged, match="checksum"):
        read_chunk(worker, plan.chunks[0])
    assert read_chunk(worker, plan.chunks[1])  # only the chunk whose bytes changed is refused
    copied.write_bytes(copied.read_bytes() + b"03/10/2014,10:00:00.000,1.5,1,0,,\r\n")
    with pytest.raises(ChunkChanged, match="size"):
        read_chunk(worker, plan.chunks[1])


def test_a_plan_saved_by_an_older_version_is_refused_saying_so() -> None:
    from k2jobs.errors import StoredDataError
    from k2jobs.plan.model import JobPlan

    plan = plan_job(SAMPLE.parent, SAMPLE, lines_per_chunk=50_000)
    raw = plan.to_dict()
    assert JobPlan.from_dict(raw) == plan
    del raw["version"]  # versions before the stored-plan version wrote none, and chunks with file_mtime_ns
    for chunk in raw["chunks"]:  # type: ignore[attr-defined]
        chunk["file_mtime_ns"] = 0
    with pytest.raises(StoredDataError, match="stored by another version of k2jobs"):
        JobPlan.from_dict(raw)


def test_a_plan_stored_by_another_version_is_refused_in_one_place(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import orjson

    from k2jobs.errors import StoredDataError
    from k2jobs.plan.model import PLAN_VERSION, JobPlan

    root = tmp_path / "in"
    (root / "trades").mkdir(parents=True)
    (root / "reference-data").mkdir()
    (root / "reference-data" / "company_info.csv").write_text("company_id,symbol\n1,AAA\n")
    (root / "trades" / "1.csv").write_bytes(b"03/10/2014,10:05:51.000,37.53,100,3,XT,\r\n" * 3)
    plan = plan_job(tmp_path, root, 10)
    stored = orjson.loads(orjson.dumps(plan.to_dict()))
    assert stored["version"] == PLAN_VERSION
    assert JobPlan.from_dict(stored).chunks == plan.chunks
    for version in (None, PLAN_VERSION + 1):
        with pytest.raises(StoredDataError, match="stored by another version of k2jobs"):
            JobPlan.from_dict({**stored, "version": version})


def test_a_plan_is_stored_as_its_files_and_one_record_per_task() -> None:
    """A worker reads the record of the task it runs (its chunks, the task after it in its key), never the whole
    plan; the whole plan, for reconciling, is the head and every record put together again."""
    import orjson

    from k2jobs.errors import StoredDataError
    from k2jobs.plan.model import PLAN_VERSION, JobPlan, TaskPlan

    plan = plan_job(SAMPLE.parent, SAMPLE, lines_per_chunk=5_000, task_rows=20_000)
    tasks = plan.task_plans()
    assert len(tasks) < len(plan.chunks)  # some tasks load several chunks
    assert sorted(c.index for t in tasks for c in t.chunks) == [c.index for c in plan.chunks]
    for task in tasks:
        assert [c.index for c in task.chunks] == [c.index for c in plan.task_chunks(task.index)]
    chains = [c for c in plan.key_tasks() if len(c) > 1]
    assert chains  # the sample's big files are chains of several tasks
    nexts = {t.index: t.next for t in tasks}
    for chain in plan.key_tasks():
        assert [nexts[t] for t in chain[:-1]] == chain[1:]
    records = [orjson.loads(orjson.dumps(t.to_record())) for t in tasks]
    assert [TaskPlan.from_record(r) for r in records] == tasks
    head = orjson.loads(orjson.dumps(plan.head()))
    assert "chunks" not in head and head["version"] == PLAN_VERSION
    again = JobPlan.from_stored(head, records[::-1])  # in any order, as HVALS returns them
    assert (again.files, again.chunks, again.tasks) == (plan.files, plan.chunks, plan.tasks)
    with pytest.raises(StoredDataError, match="stored by another version of k2jobs"):
        JobPlan.from_stored({**head, "version": PLAN_VERSION - 1}, records)
