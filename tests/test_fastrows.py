"""The compiled fast path gives exactly what the Python parser gives, on any input; pure.

k2jobs._fastrows accepts only common, valid, unquoted rows and hands everything else back to Python,
so the two paths must agree byte for byte: values, headers, dead letters, counts and order.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2jobs.plan.model import ChunkPlan
from k2jobs.rows.batches import COMPILED, ChunkRows
from k2jobs.sources.local import plan_job

ROOT = Path(__file__).resolve().parent.parent


def test_the_compiled_fast_path_is_built() -> None:
    assert COMPILED, "k2jobs._fastrows was not built: install a C compiler (gcc) and reinstall k2jobs"


def chunk_of(data: bytes, kind: str, first_line: int = 1) -> ChunkPlan:
    return ChunkPlan(0, f"{kind}/7078.csv", f"{kind}/7078.csv", kind, "BHP", 7078, 0, len(data), first_line, 0, 0, 0)


def both_paths(data: bytes, kind: str, batch_lines: int = 7) -> tuple[object, object, int]:
    """Everything each path produces for `data`, and how many lines the compiled path deferred."""
    results = []
    for compiled in (True, False):
        rows = ChunkRows(data, chunk_of(data, kind), "job-1", compiled=compiled, ingestion_ms=1_700_000_000_000)
        batches = [(b.values, b.headers, b.dead, b.dead_headers) for b in rows.batches(batch_lines)]
        results.append((batches, rows.counts()))
    fast = ChunkRows(data, chunk_of(data, kind), "job-1", compiled=True, ingestion_ms=0)
    deferred = len(fast._lines.parse(data, 0, 1, 10**9, 0)[2])
    return results[0], results[1], deferred


@pytest.mark.parametrize("kind", ["trades", "quotes"])
def test_real_sample_rows_are_identical_and_none_is_left_to_python(kind: str) -> None:
    assert COMPILED
    for path in sorted((ROOT / "data" / "sample" / kind).glob("*.csv")):
        data = path.read_bytes()
        compiled, python, deferred = both_paths(data, kind, batch_lines=5000)
        assert compiled == python, path
        assert deferred == 0, f"{path}: {deferred} plain rows missed the fast path"


# -- generated input -----------------------------------------------------------------------------
valid_dates = st.dates(date(1971, 1, 1), date(2037, 12, 31)).map(lambda d: f"{d:%m/%d/%Y}")
odd_dates = st.sampled_from(
    ["02/29/2016", "02/29/2015", "02/30/2014", "13/01/2014", "00/10/2014", "1/2/2014", "03/10/14", "٠٣/10/2014",
     "04/06/2014", "10/05/2014", "01/01/0001", "12/31/9999", "03-10-2014"]
)  # fmt: skip


def sydney_transition_days(first: int, last: int) -> list[str]:
    """MM/DD/YYYY of every day Sydney's UTC offset changes (daylight saving starts or ends)."""
    zone, days = ZoneInfo("Australia/Sydney"), []
    day = date(first, 1, 1)
    while day.year <= last:
        if (
            datetime(day.year, day.month, day.day, tzinfo=zone).utcoffset()
            != datetime(day.year, day.month, day.day, 23, tzinfo=zone).utcoffset()
        ):
            days.append(f"{day:%m/%d/%Y}")
        day += timedelta(days=1)
    return days


# The nights the clocks change, at times around the skipped (rejected) and repeated (first occurrence) hour.
dst_dates = st.sampled_from(sydney_transition_days(1971, 2037))
dst_times = st.builds(
    lambda h, m, s, f: f"{h:02}:{m:02}:{s:02}" + (f".{f}" if f else ""),
    st.integers(1, 3), st.integers(0, 59), st.sampled_from([0, 1, 30, 59]), st.sampled_from(["", "0", "999"]),
)  # fmt: skip
valid_times = st.builds(
    lambda h, m, s, f: f"{h:02}:{m:02}:{s:02}" + (f".{f}" if f else ""),
    st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.text("0123456789", max_size=3),
)  # fmt: skip
odd_times = st.sampled_from(
    ["24:00:00", "23:60:00", "23:59:60", "99:99:99", "1:02:03", "10:05:44.", "10:05:44.1234", "02:30:00", "10:05",
     "١٠:05:44"]
)  # fmt: skip
valid_prices = st.builds(
    lambda i, f: f"{i}.{f}" if f else str(i), st.integers(0, 10**12 - 1), st.text("0123456789", max_size=6)
)
valid_ints = st.builds(lambda zeros, i: "0" * zeros + str(i), st.integers(0, 2), st.integers(0, 10**18 - 1))
odd_numbers = st.one_of(
    st.integers(0, 10**19).map(str),
    st.sampled_from(["", "0", "00", "000123", "1e3", "-1", "+1", "1.", ".5", "1.1234567", "1.123456", "1234567890123",
                     "123456789012.123456", "9223372036854775807", "9223372036854775808", "999999999999999999",
                     "0000000000000000001", "٣", " 1", "1 "]),
    st.builds(lambda i, f: f"{i}.{f}", st.integers(0, 10**13), st.text("0123456789", min_size=1, max_size=7)),
)  # fmt: skip
texts = st.one_of(
    st.text(st.characters(codec="utf-8", blacklist_characters=",\n"), max_size=6),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters=","), max_size=6),
    st.sampled_from(["", "X", "B7", 'a"b', "a\\b", "\\", '"', "\t", " ", "\x7f", "\x1f", "é", "\r", "x\ry"]),
)  # fmt: skip
junk = st.sampled_from(["", " ", "\t", "\r", "   \r", ",", '"', "\xff", "\x00"])


def row(kind: str) -> st.SearchStrategy[str]:
    """Mostly valid rows with at most one odd field, rows with fields missing or added, quoted rows, junk."""
    numbers = [valid_prices, valid_ints, valid_ints] if kind == "trades" else [valid_prices, valid_prices]
    valid = [valid_dates, valid_times, *numbers, *([texts, texts] if kind == "trades" else [valid_ints, valid_ints])]
    odd = [odd_dates, odd_times, *[odd_numbers] * (len(valid) - 2)]
    fields = st.one_of(st.tuples(*valid).map(list), st.tuples(dst_dates, dst_times, *valid[2:]).map(list))
    one_odd = st.integers(0, len(valid) - 1).flatmap(
        lambda i: st.tuples(fields, odd[i]).map(lambda t: t[0][:i] + [t[1]] + t[0][i + 1 :])
    )
    return st.one_of(
        fields.map(",".join),
        one_odd.map(",".join),
        st.tuples(fields, st.integers(0, 8), st.integers(0, 8)).map(lambda t: ",".join(t[0][: t[1]] + t[0][t[2] :])),
        fields.map(lambda f: ",".join(f'"{x}"' for x in f)),
        junk,
    )


def chunk_bytes(kind: str) -> st.SearchStrategy[bytes]:
    endings = st.sampled_from(["\n", "\r\n", "\r\r\n"])
    lines = st.lists(st.tuples(row(kind), endings), max_size=12)
    ends_open = st.booleans()  # the last line of a file may have no line ending
    joined = st.tuples(lines, ends_open).map(lambda t: ("".join(a + b for a, b in t[0]), t[1]))
    return joined.map(lambda t: t[0].encode("utf-8", "surrogatepass").rstrip(b"\n" if t[1] else b""))


@settings(max_examples=400, deadline=None)
@given(chunk_bytes("trades"))
def test_generated_trade_chunks_give_identical_messages(data: bytes) -> None:
    compiled, python, _ = both_paths(data, "trades")
    assert compiled == python


@settings(max_examples=400, deadline=None)
@given(chunk_bytes("quotes"))
def test_generated_quote_chunks_give_identical_messages(data: bytes) -> None:
    compiled, python, _ = both_paths(data, "quotes")
    assert compiled == python


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["trades", "quotes"]))
def test_arbitrary_bytes_give_identical_messages(data: bytes, kind: str) -> None:
    compiled, python, _ = both_paths(data, kind)
    assert compiled == python


@settings(max_examples=200, deadline=None)
@given(valid_dates, valid_times, st.integers(0, 10**12 - 1), st.integers(0, 10**18 - 1), st.text("XYZ1 ", max_size=4))
def test_plain_valid_rows_take_the_fast_path(day: str, clock: str, price: int, volume: int, venue: str) -> None:
    line = f"{day},{clock},{price},{volume},0,{venue},\r\n".encode()
    assert both_paths(line, "trades")[2] == 0


def test_batches_resume_mid_chunk_at_the_right_line() -> None:
    data = b"".join(b"03/10/2014,10:05:%02d.000,37.5,100,0,,\r\n" % s for s in range(20))
    chunk = chunk_of(data, "trades", first_line=101)
    rows = ChunkRows(data, chunk, "job-1", compiled=True, ingestion_ms=0)
    sizes = [len(b.values) for b in rows.batches(7)]
    assert sizes == [7, 7, 6]
    rows = ChunkRows(data, chunk, "job-1", compiled=True, ingestion_ms=0)
    last = list(rows.batches(7))[-1]
    assert last.headers[-1][1] == ("source", b"trades/7078.csv:120")


def test_plan_of_the_sample_is_parsed_identically_chunk_by_chunk() -> None:
    plan = plan_job(ROOT, ROOT / "data" / "sample", 10_000)
    for chunk in plan.chunks[:6]:
        data = (ROOT / chunk.data_path).read_bytes()[chunk.start : chunk.end]
        out = [ChunkRows(data, chunk, "j", compiled=c, ingestion_ms=0) for c in (True, False)]
        values = [[v for b in rows.batches(1000) for v in b.values] for rows in out]
        assert values[0] == values[1]
        assert len(values[0]) == chunk.rows


def test_lines_longer_than_the_fast_path_buffer_are_left_to_python() -> None:
    venue = "V" * 600  # the compiled path takes lines up to 512 bytes
    data = f"03/10/2014,10:05:44.516,37.51,40000,3,{venue},B7\r\n03/10/2014,10:05:45,37.52,100,3,,\r\n".encode()
    compiled, python, deferred = both_paths(data, "trades")
    assert compiled == python
    assert deferred == 1
    [values] = [batch[0] for batch in compiled[0]]  # type: ignore[index]
    assert venue in values[0].decode()


@pytest.mark.parametrize("kind", ["trades", "quotes"])
def test_daylight_saving_nights_give_identical_messages_and_dead_letters(kind: str) -> None:
    rest = "1.5,100,0,X,B" if kind == "trades" else "1.5,1.6,100,200"
    times = ["01:59:59.999", "02:00:00.000", "02:30:00", "02:59:59.999", "03:00:00.000"]
    data = "".join(f"{day},{t},{rest}\r\n" for day in ("04/06/2014", "10/05/2014") for t in times).encode()
    compiled, python, deferred = both_paths(data, kind, batch_lines=4)
    assert compiled == python
    assert deferred == 3  # the skipped hour is left to Python, which rejects it
    dead = [orjson.loads(v) for batch in compiled[0] for v in batch[2]]  # type: ignore[index]
    assert [d["line"] for d in dead] == [7, 8, 9]
    assert all("does not exist in Australia/Sydney" in d["error"] for d in dead)
