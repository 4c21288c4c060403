"""Files that grow (k2jobs/appends.py): a later plan loads only the lines after what was published, refuses a
file whose published part changed, and leaves an unfinished last line for later; no services."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from k2jobs.plan.extents import MAX_PIECES, Extent, merged
from k2jobs.plan.model import JobPlan
from k2jobs.sources.local import plan_job

from .test_planning import TRADE, make_dir


def line(n: int) -> bytes:
    return TRADE.replace(b"40000", str(40000 + n).encode()) + b"\r\n"


def lines(first: int, last: int) -> bytes:
    return b"".join(line(n) for n in range(first, last + 1))


class Published:
    """Stands in for the ledger: the extents succeeded jobs recorded, by path under the data root."""

    def __init__(self) -> None:
        self.extents: dict[str, Extent] = {}

    def __call__(self, identities: list[str]) -> dict[str, Extent]:
        return {i: self.extents[i] for i in identities if i in self.extents}

    def succeeded(self, plan: JobPlan, job_id: str) -> None:
        for f in plan.files:
            if f.identity and f.end:
                pieces = merged([(s, e, c) for s, e, c in f.pieces])
                self.extents[f.identity] = Extent(f.end, f.next_line, f.newline, pieces, job_id)


def plan(root: Path, job: Path, published: Published, complete_only: bool = False, chunk_rows: int = 4) -> JobPlan:
    return plan_job(root, job, chunk_rows, extents_for=published, complete_only=complete_only)


def loaded_lines(root: Path, plan_: JobPlan) -> list[tuple[int, bytes]]:
    """(line number, line) of every line the plan's chunks hold."""
    found = []
    for chunk in plan_.chunks:
        data = (root / chunk.data_path).read_bytes()[chunk.start : chunk.end]
        for offset, text in enumerate(data.splitlines(keepends=True)):
            found.append((chunk.first_line + offset, text))
    return found


def test_a_file_appended_in_three_pieces_loads_each_line_once_with_its_line_number(tmp_path: Path) -> None:
    job, published = make_dir(tmp_path, {"trades/7078.csv": lines(1, 5)}), Published()
    path = job / "trades" / "7078.csv"
    seen: list[tuple[int, bytes]] = []
    for number, (first, last) in enumerate([(1, 5), (6, 11), (12, 12)]):
        if first > 1:
            with path.open("ab") as f:
                f.write(lines(first, last))
        p = plan(tmp_path, job, published)
        assert [f.path for f in p.files] == ["trades/7078.csv"] and p.rows == last - first + 1
        assert p.files[0].start == len(lines(1, first - 1)) and p.files[0].first_line == first
        seen += loaded_lines(tmp_path, p)
        published.succeeded(p, f"job-{number}")
    assert seen == [(n, line(n)) for n in range(1, 13)]
    again = plan(tmp_path, job, published)
    assert again.chunks == [] and again.unchanged == ["trades/7078.csv (published by job job-2)"]


def test_an_unfinished_last_line_waits_until_it_is_finished(tmp_path: Path) -> None:
    job, published = make_dir(tmp_path, {"trades/7078.csv": lines(1, 3) + line(4)[:10]}), Published()
    first = plan(tmp_path, job, published, complete_only=True)
    assert first.rows == 3 and loaded_lines(tmp_path, first)[-1] == (3, line(3))
    published.succeeded(first, "job-1")
    assert plan(tmp_path, job, published, complete_only=True).chunks == []  # still unfinished: nothing new
    with (job / "trades" / "7078.csv").open("ab") as f:
        f.write(line(4)[10:] + line(5)[:5])
    second = plan(tmp_path, job, published)  # a file published before: its unfinished last line waits too
    assert loaded_lines(tmp_path, second) == [(4, line(4))]


def test_a_published_part_that_changed_is_named_with_its_byte_range(tmp_path: Path) -> None:
    job, published = make_dir(tmp_path, {"trades/7078.csv": lines(1, 10)}), Published()
    published.succeeded(plan(tmp_path, job, published), "job-1")
    path = job / "trades" / "7078.csv"
    data = bytearray(path.read_bytes() + lines(11, 12))
    at = len(lines(1, 6)) + 3  # inside line 7, in the second piece of 4 lines (lines 5-8)
    data[at : at + 1] = b"9" if data[at : at + 1] != b"9" else b"8"
    path.write_bytes(bytes(data))
    p = plan(tmp_path, job, published)
    start, end = len(lines(1, 4)), len(lines(1, 8))
    assert p.chunks == [] and p.changed == [
        f"trades/7078.csv: bytes {start}-{end} changed since job job-1 published them "
        "(--again loads the whole file again)"
    ]
    path.write_bytes(lines(1, 8))  # shorter than published: the missing piece is named
    assert f"bytes {len(lines(1, 8))}-{len(lines(1, 10))} changed" in plan(tmp_path, job, published).changed[0]


def test_a_last_line_published_without_its_ending_may_only_be_ended(tmp_path: Path) -> None:
    job, published = make_dir(tmp_path, {"trades/7078.csv": lines(1, 3).rstrip(b"\r\n")}), Published()
    first = plan(tmp_path, job, published)  # a plain first submit loads the last line as it is
    assert first.rows == 3 and not first.files[0].newline
    published.succeeded(first, "job-1")
    path = job / "trades" / "7078.csv"
    path.write_bytes(lines(1, 5))  # line 3 got its ending, lines 4-5 followed
    assert loaded_lines(tmp_path, plan(tmp_path, job, published)) == [(4, line(4)), (5, line(5))]
    path.write_bytes(lines(1, 3).rstrip(b"\r\n") + b"9\r\n")  # line 3 went on: what was published changed
    assert "its last line went on" in plan(tmp_path, job, published).changed[0]


def test_a_file_with_a_byte_order_mark_and_a_gzip_file_grow_like_plain_files(tmp_path: Path) -> None:
    files = {"trades/7078.csv": b"\xef\xbb\xbf" + lines(1, 3), "quotes/7078.csv.gz": gzip.compress(lines(1, 3))}
    job, published = make_dir(tmp_path, files), Published()
    published.succeeded(plan(tmp_path, job, published), "job-1")
    with (job / "trades" / "7078.csv").open("ab") as f:
        f.write(lines(4, 4))
    with (job / "quotes" / "7078.csv.gz").open("ab") as f:
        f.write(gzip.compress(lines(4, 6)))  # a second gzip member
    p = plan(tmp_path, job, published)
    assert {f.path: (f.first_line, f.rows) for f in p.files} == {
        "trades/7078.csv": (4, 1),
        "quotes/7078.csv.gz": (4, 3),
    }
    trades = next(f for f in p.files if f.path == "trades/7078.csv")
    assert trades.crc32 == zlib.crc32(b"\xef\xbb\xbf" + lines(1, 4))  # the whole file's content, for load-once


def test_merged_pieces_keep_the_checksum_of_the_whole() -> None:
    data = lines(1, 600)
    pieces = [(s, min(s + 37, len(data)), zlib.crc32(data[s : s + 37])) for s in range(0, len(data), 37)]
    assert len(pieces) > MAX_PIECES
    few = merged(pieces)
    assert len(few) <= MAX_PIECES and few[0][0] == 0 and few[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(few, few[1:], strict=False))
    assert all(zlib.crc32(data[s:e]) == c for s, e, c in few)
    assert Extent(len(data), 601, True, few, "j").crc32 == zlib.crc32(data)


def test_a_new_file_that_sorts_before_a_published_file_of_its_key_is_marked_out_of_order(tmp_path: Path) -> None:
    job, published = make_dir(tmp_path, {"trades/7078.csv.gz": gzip.compress(lines(1, 3))}), Published()
    published.succeeded(plan(tmp_path, job, published), "job-1")
    (job / "trades" / "7078.csv").write_bytes(lines(4, 5))  # same key, sorts before the published 7078.csv.gz
    (job / "quotes").mkdir()
    (job / "quotes" / "7078.csv").write_bytes(lines(1, 2))  # another key: in order
    p = plan(tmp_path, job, published)
    notes = {f.path: f.out_of_order for f in p.files}
    assert notes["quotes/7078.csv"] == ""
    assert notes["trades/7078.csv"] == (
        "trades/7078.csv sorts before 7078.csv.gz, loaded earlier by job job-1: its rows come after that file's"
    )
