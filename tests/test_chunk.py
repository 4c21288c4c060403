"""Parsing a whole chunk: line numbers, blank lines, line endings, dead letters, batching; no services.

Every test runs twice: with the compiled fast path and with the pure-Python parser alone.
"""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from k2jobs.load.chunk import send_rows
from k2jobs.plan.model import ChunkPlan
from k2jobs.rows.batches import COMPILED, ChunkRows
from k2jobs.sources.local import plan_job

CORPUS = Path(__file__).resolve().parent / "corpus" / "bad-rows"
PATHS = [pytest.param(True, id="compiled"), pytest.param(False, id="python")]


@pytest.fixture(params=PATHS)
def compiled(request: pytest.FixtureRequest) -> bool:
    if request.param and not COMPILED:
        pytest.fail("k2jobs._fastrows is not built (no C compiler at install time?)")
    return bool(request.param)


def messages(data: bytes, chunk: ChunkPlan, compiled: bool, batch_lines: int = 1000) -> tuple[list, list, ChunkRows]:  # type: ignore[type-arg]
    """(data messages, dead letters, the ChunkRows) as (value, line number) pairs in order."""
    rows = ChunkRows(data, chunk, "job-1", compiled=compiled, ingestion_ms=0)
    published, dead = [], []
    for batch in rows.batches(batch_lines):
        published += [(v, line_of(h)) for v, h in zip(batch.values, batch.headers, strict=True)]
        dead += [(v, line_of(h)) for v, h in zip(batch.dead, batch.dead_headers, strict=True)]
    return published, dead, rows


def line_of(headers: list) -> int:  # type: ignore[type-arg]
    (name, job), (source, where) = headers
    assert (name, job, source) == ("job_id", b"job-1", "source")
    return int(where.rsplit(b":", 1)[1])


@pytest.mark.parametrize("path", ["trades/7078.csv", "quotes/7078.csv", "trades/7181.csv"])
def test_every_planned_row_is_parsed_once_with_its_line_number(path: str, compiled: bool) -> None:
    plan = plan_job(CORPUS.parent, CORPUS, 4)
    for chunk in (c for c in plan.chunks if c.path == path):
        data = (CORPUS / path).read_bytes()[chunk.start : chunk.end]
        published, dead, rows = messages(data, chunk, compiled)
        assert len(published) + len(dead) == chunk.rows
        assert (rows.published, rows.rejected) == (len(published), len(dead))
        numbers = sorted(n for _, n in published + dead)
        assert numbers == sorted(set(numbers))
        assert all(chunk.first_line <= n < chunk.first_line + 4 for n in numbers)
        assert [n for _, n in published] == sorted(n for _, n in published)  # source order


def test_a_line_that_is_not_utf8_is_rejected_alone_with_its_raw_bytes(compiled: bool) -> None:
    plan = plan_job(CORPUS.parent, CORPUS, 100)
    chunk = next(c for c in plan.chunks if c.path == "trades/7078.csv")
    published, dead, rows = messages((CORPUS / chunk.path).read_bytes()[chunk.start : chunk.end], chunk, compiled)
    assert (rows.published, rows.rejected) == (4, 8)
    [bad] = [orjson.loads(v) for v, line in dead if line == 10]
    assert bad["raw_encoding"] == "base64"
    assert base64.b64decode(bad["raw"]) == b"03/10/2014,10:05:51.000,37.53,100,3,\xe9X,"
    [good] = [orjson.loads(v) for v, line in published if line == 14]
    assert good["buyer_id"] == "B7"  # the last line, without a line ending
    assert len(rows.reasons) == 5 and rows.reasons[0].startswith("line ")


def test_crlf_and_lf_give_the_same_values(compiled: bool) -> None:
    plan = plan_job(CORPUS.parent, CORPUS, 100)
    chunk = next(c for c in plan.chunks if c.path == "trades/7181.csv")
    crlf = (CORPUS / chunk.path).read_bytes()
    lf = crlf.replace(b"\r\n", b"\n")
    assert messages(crlf, chunk, compiled)[:2] == messages(lf, chunk, compiled)[:2]
    assert orjson.loads(messages(crlf, chunk, compiled)[0][0][0])["buyer_id"] is None


class RecordingTransaction:
    """Stands in for Kafka's client in a pure test of batching: records what it is handed."""

    def __init__(self) -> None:
        self.batches: list[tuple] = []  # type: ignore[type-arg]
        self.compiled = False  # no librdkafka handle: every row goes through send_batch

    def send_batch(self, topic, key, values, headers) -> None:  # type: ignore[no-untyped-def]
        self.batches.append((topic, key, list(values), list(headers)))


def test_rows_are_sent_in_order_in_batches_with_their_headers(compiled: bool) -> None:
    plan = plan_job(CORPUS.parent, CORPUS, 100)
    chunk = next(c for c in plan.chunks if c.path == "trades/7078.csv")
    data = (CORPUS / chunk.path).read_bytes()[chunk.start : chunk.end]
    published, dead, _ = messages(data, chunk, compiled)
    done: list[int] = []
    txn = RecordingTransaction()
    send_rows(txn, ChunkRows(data, chunk, "job-1", compiled=compiled, ingestion_ms=0), 5, done.append)  # type: ignore[arg-type]
    assert done == [4, 9, 12]  # rows handled after each batch of 5 lines; lines 3 and 12 are blank
    sent = {topic: [] for topic in ("market.trades.raw", "market.trades.dlq")}  # type: ignore[var-annotated]
    for topic, key, values, headers in txn.batches:
        assert key == b"ASX.BHP"
        sent[topic] += [(v, line_of(h)) for v, h in zip(values, headers, strict=True)]
    assert sent == {"market.trades.raw": published, "market.trades.dlq": dead}
    assert txn.batches[0][3][0] == [("job_id", b"job-1"), ("source", b"trades/7078.csv:1")]


def test_a_chunk_gives_up_only_once_both_its_retries_and_its_seconds_are_spent() -> None:
    """Eight retries with a 10 s backoff cap last under a minute: broker restarts last longer (test_cluster)."""
    from k2jobs.worker.tasks import out_of_retries

    assert not out_of_retries(8, 55.0, max_retries=8, retry_for_s=300)
    assert not out_of_retries(3, 400.0, max_retries=8, retry_for_s=300)
    assert out_of_retries(8, 300.0, max_retries=8, retry_for_s=300)
    assert out_of_retries(2, 8.5, max_retries=2, retry_for_s=8)
