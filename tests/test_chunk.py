"""Parsing a whole chunk: line numbers, blank lines, line endings, dead letters; no services."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from k2jobs.chunk import parse_rows
from k2jobs.planning import plan_job

CORPUS = Path(__file__).resolve().parent / "corpus" / "bad-rows"


@pytest.mark.parametrize("path", ["trades/7078.csv", "quotes/7078.csv", "trades/7181.csv"])
def test_every_planned_row_is_parsed_once_with_its_line_number(path: str) -> None:
    plan = plan_job(CORPUS.parent, CORPUS, 4)
    for chunk in (c for c in plan.chunks if c.path == path):
        data = (CORPUS / path).read_bytes()[chunk.start : chunk.end]
        parsed = parse_rows(data, chunk)
        assert len(parsed.rows) == chunk.rows
        assert parsed.counts["published"] + parsed.counts["rejected"] == chunk.rows
        numbers = [line for _, _, line in parsed.rows]
        assert numbers == sorted(set(numbers))
        assert all(chunk.first_line <= n < chunk.first_line + 4 for n in numbers)


def test_a_line_that_is_not_utf8_is_rejected_alone_with_its_raw_bytes() -> None:
    plan = plan_job(CORPUS.parent, CORPUS, 100)
    chunk = next(c for c in plan.chunks if c.path == "trades/7078.csv")
    parsed = parse_rows((CORPUS / chunk.path).read_bytes()[chunk.start : chunk.end], chunk)
    assert (parsed.counts["published"], parsed.counts["rejected"]) == (4, 8)
    [bad] = [orjson.loads(v) for t, v, line in parsed.rows if line == 10]
    assert bad["raw_encoding"] == "base64"
    assert base64.b64decode(bad["raw"]) == b"03/10/2014,10:05:51.000,37.53,100,3,\xe9X,"
    [good] = [orjson.loads(v) for t, v, line in parsed.rows if line == 14]
    assert good["buyer_id"] == "B7"  # the last line, without a line ending


def test_crlf_and_lf_give_the_same_values() -> None:
    plan = plan_job(CORPUS.parent, CORPUS, 100)
    chunk = next(c for c in plan.chunks if c.path == "trades/7181.csv")
    crlf = (CORPUS / chunk.path).read_bytes()
    lf = crlf.replace(b"\r\n", b"\n")
    strip = lambda rows: [(t, orjson.loads(v) | {"ingestion_timestamp": 0}, n) for t, v, n in rows]  # noqa: E731
    assert strip(parse_rows(crlf, chunk).rows) == strip(parse_rows(lf, chunk).rows)
    assert orjson.loads(parse_rows(crlf, chunk).rows[0][1])["buyer_id"] is None


class RecordingTransaction:
    """Stands in for Kafka's client in a pure test of batching: records what it is handed."""

    def __init__(self) -> None:
        self.batches: list[list[tuple]] = []  # type: ignore[type-arg]

    def send_batch(self, messages) -> None:  # type: ignore[no-untyped-def]
        self.batches.append(list(messages))


def test_rows_are_sent_in_order_in_batches_with_their_headers() -> None:
    from k2jobs.chunk import send_rows

    plan = plan_job(CORPUS.parent, CORPUS, 100)
    chunk = next(c for c in plan.chunks if c.path == "trades/7078.csv")
    parsed = parse_rows((CORPUS / chunk.path).read_bytes()[chunk.start : chunk.end], chunk)
    expected = [(t, v) for t, v, _ in parsed.rows]
    done: list[int] = []
    txn = RecordingTransaction()
    send_rows(txn, parsed, chunk, "job-1", 5, done.append)  # type: ignore[arg-type]
    assert [len(b) for b in txn.batches] == [5, 5, 2]
    assert done == [5, 10, 12]
    sent = [m for batch in txn.batches for m in batch]
    assert [(t, v) for t, _, v, _ in sent] == expected
    assert sent[0][3] == [("job_id", b"job-1"), ("source", b"trades/7078.csv:1")]
    assert {key for _, key, _, _ in sent} == {b"ASX.BHP"}
