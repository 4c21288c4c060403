"""A chunk's bytes to batches of Kafka messages: compiled fast path for common rows, Python for the rest; pure."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from k2jobs.plan.model import ChunkPlan, Kind
from k2jobs.rows.avro import AvroRowParser
from k2jobs.rows.json_rows import RowError, RowParser, decode_line, hour_start_ms

try:
    from k2jobs.rows._fastrows import FastRows
except ImportError:  # installed without a C compiler: every row takes the Python path
    FastRows = None

COMPILED = FastRows is not None
MAX_REASONS = 5  # rejection reasons kept per chunk for the report
Parsed = tuple[list[Any], list[Any], list[tuple[int, int, bytes]], int, int]

# A Kafka message's headers, as confluent-kafka takes them.
Headers = list[tuple[str, str | bytes | None]]


class LineParser(Protocol):
    def parse(self, data: bytes, pos: int, line_no: int, max_lines: int, ingestion: int) -> Parsed: ...


class QueueRows(Protocol):
    def __call__(
        self, rows: Any, key: bytes, data: bytes, pos: int, line_no: int, max_lines: int, ingestion: int
    ) -> tuple[int, int, int, bool]: ...


class PythonLines:
    """The line parser used without the compiled one: the Python parser on every line.

    Like the compiled parser, it hands back ("defers") what it does not turn into a value -- blank lines and
    rows it rejects -- and ChunkRows deals with those (parsing a rejected row again, for its reason).
    """

    def __init__(self, rows: RowParser, headers: Callable[[int], Headers]) -> None:
        self._parse_line, self._headers = rows.parse_line, headers

    def parse(self, data: bytes, pos: int, line_no: int, max_lines: int, ingestion_ms: int) -> Parsed:
        end = pos
        for _ in range(max_lines):
            newline = data.find(b"\n", end)
            end = len(data) if newline < 0 else newline + 1
            if end >= len(data):
                break
        piece = data[pos:end]
        raw_lines = piece.split(b"\n")
        if piece.endswith(b"\n"):
            raw_lines.pop()  # what follows the last line ending is not a line
        try:
            texts: list[str | None] = list(piece.decode("utf-8").split("\n"))
        except UnicodeDecodeError:
            texts = [None] * len(raw_lines)  # some line is not UTF-8: every line is decoded on its own later
        values: list[bytes | None] = []
        headers: list[Headers | None] = []
        deferred: list[tuple[int, int, bytes]] = []
        for number, raw, text in zip(range(line_no, line_no + len(raw_lines)), raw_lines, texts, strict=False):
            try:
                value = None if text is None else self._parse_line(text, ingestion_ms, number)
            except RowError:
                value = None
            if value is None:
                deferred.append((len(values), number, raw))
            values.append(value)
            headers.append(None if value is None else self._headers(number))
        return values, headers, deferred, end, line_no + len(raw_lines)


def dead_letter(error: str, chunk: ChunkPlan, line_no: int, raw: bytes) -> bytes:
    """The JSON value of a rejected row: reason, where it came from, and the original line."""
    value: dict[str, Any] = {"error": error, "file": chunk.path, "line": line_no, "kind": chunk.kind}
    try:
        value["raw"], value["raw_encoding"] = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        value["raw"], value["raw_encoding"] = base64.b64encode(raw).decode("ascii"), "base64"
    return orjson.dumps(value)


@dataclass
class Batch:
    """The messages of consecutive lines: data values with their headers in source order, and dead letters."""

    values: list[bytes]
    headers: list[Headers]
    dead: list[bytes]
    dead_headers: list[Headers]


class ChunkRows:
    """Parses one chunk batch by batch, keeping its counts; every non-blank line becomes one message."""

    def __init__(
        self, data: bytes, chunk: ChunkPlan, job_id: str, compiled: bool = COMPILED, ingestion_ms: int | None = None
    ) -> None:
        kind = Kind(chunk.kind)
        self.chunk = chunk
        self.published = self.rejected = 0
        self.reasons: list[str] = []
        self._data = data
        self._job_header = ("job_id", job_id.encode())
        self._prefix = f"{chunk.path}:"
        ingestion_us = time.time_ns() // 1000 if ingestion_ms is None else ingestion_ms * 1000
        avro_parts: tuple[bytes, ...] | None = None
        self._rows: RowParser
        if chunk.value_format == "avro":
            avro_rows = AvroRowParser(kind, chunk.symbol, chunk.company_id, self._prefix, chunk.schema_id)
            self._rows, self._ingestion, avro_parts = avro_rows, ingestion_us, avro_rows.compiled_parts()
        else:
            self._rows, self._ingestion = RowParser(kind, chunk.symbol, chunk.company_id), ingestion_us // 1000
        self.key = self._rows.key
        self._lines: LineParser = PythonLines(self._rows, self.headers)
        if compiled and FastRows is not None:
            exchange = self._rows.exchange

            def hour_ms(date: str, hour: int) -> int | None:
                try:
                    return hour_start_ms(date, hour, exchange)
                except RowError:
                    return None  # no such date or local hour: the line is deferred and Python names the problem

            self._lines = FastRows(
                list(Kind).index(kind),
                self._rows.head.encode(),
                hour_ms,
                self._job_header,
                self._prefix.encode(),
                avro_parts,
            )

    def headers(self, line_no: int) -> Headers:
        return [self._job_header, ("source", f"{self._prefix}{line_no}".encode())]

    def batches(self, batch_lines: int, queue: QueueRows | None = None) -> Iterator[Batch]:
        """Batches of up to `batch_lines` lines each, in order, until the chunk's bytes are used up.

        Given `queue` (ChunkTransaction.queue_rows for the data topic) and the compiled parser, the rows the
        compiled parser accepts are queued as they are parsed and never become Python objects; a batch then
        holds only the one line it deferred, dealt with in Python. The caller sends each batch before the
        generator resumes and queues more, so the messages keep the file's order.
        """
        pos, line_no = 0, self.chunk.first_line
        fused = queue is not None and FastRows is not None and isinstance(self._lines, FastRows)
        while pos < len(self._data):
            if fused:
                assert queue is not None
                queued, pos, line_no, stopped = queue(
                    self._lines, self.key, self._data, pos, line_no, batch_lines, self._ingestion
                )
                self.published += queued
                batch = Batch([], [], [], [])
                if stopped:  # the line at pos: Python accepts it, rejects it with a reason, or skips it (blank)
                    end = self._data.find(b"\n", pos)
                    end = len(self._data) if end < 0 else end + 1
                    pending: list[Any] = [None]  # the line's place, filled by _parse_deferred if Python accepts it
                    batch = Batch(pending, list(pending), [], [])
                    self._parse_deferred(batch, [(0, line_no, self._data[pos:end].removesuffix(b"\n"))])
                    pos, line_no = end, line_no + 1
            else:
                values, headers, deferred, pos, line_no = self._lines.parse(
                    self._data, pos, line_no, batch_lines, self._ingestion
                )
                batch = Batch(values, headers, [], [])
                if deferred:
                    self._parse_deferred(batch, deferred)
            self.published += len(batch.values)
            self.rejected += len(batch.dead)
            yield batch

    def _parse_deferred(self, batch: Batch, deferred: list[tuple[int, int, bytes]]) -> None:
        """Lines the fast path left alone: accepted by the full parser, rejected with a reason, or blank."""
        for index, line_no, raw in deferred:
            try:
                value = self._rows.parse_line(decode_line(raw), self._ingestion, line_no)
            except RowError as exc:
                batch.dead.append(dead_letter(str(exc), self.chunk, line_no, raw.removesuffix(b"\r")))
                batch.dead_headers.append(self.headers(line_no))
                if len(self.reasons) < MAX_REASONS:
                    self.reasons.append(f"line {line_no}: {exc}")
                continue
            if value is not None:
                batch.values[index], batch.headers[index] = value, self.headers(line_no)
        batch.values = [v for v in batch.values if v is not None]
        batch.headers = [h for h in batch.headers if h is not None]

    def counts(self) -> dict[str, Any]:
        """What the chunk's marker and result record: planned rows, published, rejected, first reasons."""
        rows = self.chunk.rows
        return {"rows": rows, "published": self.published, "rejected": self.rejected, "reasons": self.reasons}
