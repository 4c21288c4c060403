"""Avro values (TradeV2 / QuoteV2, Confluent wire format) are exactly AvroSerializer's bytes; pure.

The compiled fast path and the Python writer (k2jobs/avro.py) must agree byte for byte, and both must
equal what confluent-kafka's AvroSerializer writes for the same record (schemas held by confluent-kafka's
in-memory registry client here; tests/test_avro_load.py runs against the real registry).
"""

from __future__ import annotations

import dataclasses
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_reader
from hypothesis import given, settings
from hypothesis import strategies as st

from k2jobs.config import load_settings
from k2jobs.errors import InputError
from k2jobs.plan.model import ChunkPlan, Kind
from k2jobs.rows.avro import schema_text, subject
from k2jobs.rows.batches import COMPILED, ChunkRows

from .reference import SYMBOLS, expected_avro_record, source_lines
from .test_fastrows import chunk_bytes, chunk_of

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
INGESTION_MS = 1_700_000_000_123
REGISTRY = SchemaRegistryClient.new_client({"url": "mock://k2jobs-tests"})
SCHEMA_IDS = {kind: REGISTRY.register_schema(subject(kind), Schema(schema_text(kind), "AVRO")) for kind in Kind}
SERIALIZERS = {
    kind: AvroSerializer(REGISTRY, schema_text(kind), conf={"auto.register.schemas": False, "use.latest.version": True})
    for kind in Kind
}
DESERIALIZER = AvroDeserializer(REGISTRY)


def plain_timestamps(kind: Kind) -> Any:
    """The schema with timestamps read as plain longs: generated dates reach years datetime cannot hold."""
    schema = json.loads(schema_text(kind))
    for field in schema["fields"]:
        if isinstance(field["type"], dict) and field["type"].get("logicalType") == "timestamp-micros":
            field["type"] = "long"
    return parse_schema(schema)


PLAIN_TIMESTAMPS = {kind: plain_timestamps(kind) for kind in Kind}


def read_record(value: bytes, kind: Kind) -> dict[str, Any]:
    """A value read back (wire header checked), timestamps as µs."""
    assert value[:5] == b"\x00" + SCHEMA_IDS[kind].to_bytes(4, "big")
    return schemaless_reader(io.BytesIO(value[5:]), PLAIN_TIMESTAMPS[kind], None)  # type: ignore[return-value]


def context(kind: Kind) -> SerializationContext:
    return SerializationContext(kind.topic, MessageField.VALUE)


def avro_chunk(chunk: ChunkPlan) -> ChunkPlan:
    return dataclasses.replace(chunk, value_format="avro", schema_id=SCHEMA_IDS[Kind(chunk.kind)])


def run(data: bytes, chunk: ChunkPlan, compiled: bool, batch_lines: int = 7) -> tuple[list[Any], dict[str, Any]]:
    rows = ChunkRows(data, chunk, "job-1", compiled=compiled, ingestion_ms=INGESTION_MS)
    batches = [(b.values, b.headers, b.dead, b.dead_headers) for b in rows.batches(batch_lines)]
    return batches, rows.counts()


def test_the_compiled_fast_path_is_built() -> None:
    assert COMPILED, "k2jobs._fastrows was not built: install a C compiler (gcc) and reinstall k2jobs"


@pytest.mark.parametrize("kind", list(Kind))
def test_real_sample_rows_equal_avro_serializer_output_on_both_paths(kind: Kind) -> None:
    for path in sorted((SAMPLE / kind.value).glob("*.csv")):
        relative = f"{kind.value}/{path.name}"
        data = path.read_bytes()
        chunk = avro_chunk(chunk_of(data, kind.value))
        chunk = dataclasses.replace(chunk, path=relative, company_id=int(path.stem), symbol=SYMBOLS[int(path.stem)])
        compiled, python = run(data, chunk, True, 5000), run(data, chunk, False, 5000)
        assert compiled == python, path
        lines = source_lines(SAMPLE, relative)
        values = [(v, h) for batch in compiled[0] for v, h in zip(batch[0], batch[1], strict=True)]
        assert len(values) == len(lines)
        serialize = SERIALIZERS[kind]
        for value, headers in values:
            line_no = int(headers[1][1].rsplit(b":", 1)[1])
            record = expected_avro_record(
                kind.value, int(path.stem), relative, line_no, lines[line_no], INGESTION_MS * 1000
            )
            assert value == serialize(record, context(kind)), f"{relative}:{line_no}"


def both_paths_agree_with_the_serializer(data: bytes, kind: str) -> tuple[Any, Any]:
    chunk = avro_chunk(chunk_of(data, kind))
    compiled, python = run(data, chunk, True), run(data, chunk, False)
    assert compiled == python
    for values, *_ in compiled[0]:
        for value in values:
            record = read_record(value, Kind(kind))
            assert SERIALIZERS[Kind(kind)](record, context(Kind(kind))) == value
    return compiled


avro_prices = st.builds(
    lambda i, f: f"{i}.{f}" if f else str(i), st.integers(0, 10**10 - 1), st.text("0123456789", max_size=8)
)
avro_edges = st.sampled_from(
    ["9999999999.99999999", "10000000000", "99999999999.9", "1.12345678", "1.123456789", "0.00000001",
     "9999999999", "10000000000", "000000000001.5", "127", "128", "255", "256", "32767", "32768"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(chunk_bytes("trades"))
def test_generated_trade_chunks_give_identical_avro(data: bytes) -> None:
    both_paths_agree_with_the_serializer(data, "trades")


@settings(max_examples=300, deadline=None)
@given(chunk_bytes("quotes"))
def test_generated_quote_chunks_give_identical_avro(data: bytes) -> None:
    both_paths_agree_with_the_serializer(data, "quotes")


@settings(max_examples=300, deadline=None)
@given(st.one_of(avro_prices, avro_edges), st.one_of(avro_prices, avro_edges), st.one_of(avro_prices, avro_edges))
def test_decimals_at_the_edges_of_decimal_18_8(price: str, volume: str, bid: str) -> None:
    trade = f"03/10/2014,10:05:44.516,{price},{volume.split('.')[0]},3,X,B7\r\n"
    quote = f"03/10/2014,10:05:44.516,{bid},{price},{volume.split('.')[0]},7\r\n"
    for kind, line in (("trades", trade), ("quotes", quote)):
        (batches, counts) = both_paths_agree_with_the_serializer(line.encode(), kind)
        values = [v for b in batches for v in b[0]]
        if counts["published"]:
            record = DESERIALIZER(values[0], context(Kind(kind)))
            assert record["price" if kind == "trades" else "ask_price"] == Decimal(price)


def single(line: str, kind: str = "trades") -> tuple[list[bytes], list[str]]:
    data = line.encode()
    batches, counts = both_paths_agree_with_the_serializer(data, kind)
    return [v for b in batches for v in b[0]], counts["reasons"]


def test_prices_with_up_to_8_decimals_are_exact_and_more_are_rejected() -> None:
    [value], _ = single("03/10/2014,10:05:44,1.12345678,100,0,,\r\n")
    assert DESERIALIZER(value, context(Kind.TRADE))["price"] == Decimal("1.12345678")
    values, [reason] = single("03/10/2014,10:05:44,1.123456789,100,0,,\r\n")
    assert values == [] and "more than 8 decimal places" in reason


def test_values_beyond_precision_18_are_rejected_with_a_reason() -> None:
    [value], _ = single("03/10/2014,10:05:44,9999999999.99999999,9999999999,0,,\r\n")
    record = DESERIALIZER(value, context(Kind.TRADE))
    assert (record["price"], record["quantity"]) == (Decimal("9999999999.99999999"), Decimal(9999999999))
    for line in ("03/10/2014,10:05:44,10000000000,1,0,,\r\n", "03/10/2014,10:05:44,1,10000000000,0,,\r\n"):
        values, [reason] = single(line)
        assert values == [] and "beyond precision 18" in reason, reason
    values, [reason] = single("03/10/2014,10:05:44,1,2,10000000000,7\r\n", "quotes")
    assert values == [] and "bid_volume" in reason and "beyond precision 18" in reason


def test_json_keeps_its_own_price_rule() -> None:
    data = b"03/10/2014,10:05:44,1.1234567,100,0,,\r\n"
    rows = ChunkRows(data, chunk_of(data, "trades"), "job-1", ingestion_ms=0)
    assert [len(b.dead) for b in rows.batches(10)] == [1]


def test_message_id_is_the_same_for_the_same_row_however_the_file_is_chunked() -> None:
    data = (SAMPLE / "trades" / "7078.csv").read_bytes()
    whole = avro_chunk(dataclasses.replace(chunk_of(data, "trades"), path="trades/7078.csv"))
    ids: list[dict[int, str]] = []
    for start_line, piece in (
        (1, data),
        (4, data[data.index(b"\n", data.index(b"\n", data.index(b"\n") + 1) + 1) + 1 :]),
    ):
        chunk = dataclasses.replace(whole, first_line=start_line, end=len(piece))
        rows = ChunkRows(piece, chunk, f"job-{start_line}", ingestion_ms=INGESTION_MS + start_line)
        by_line = {}
        for batch in rows.batches(1000):
            for value in batch.values:
                record = read_record(value, Kind.TRADE)
                by_line[record["platform_sequence"]] = record["message_id"]
        ids.append(by_line)
    common = set(ids[0]) & set(ids[1])
    assert len(common) == len(ids[0]) - 3
    assert all(ids[0][n] == ids[1][n] for n in common), "a reload gives a row another id"
    assert len(set(ids[0].values())) == len(ids[0]), "two rows share an id"


def test_json_is_the_default_format_and_k2_format_is_checked() -> None:
    assert load_settings({}).value_format == "json"
    assert load_settings({"K2_FORMAT": "avro"}).value_format == "avro"
    with pytest.raises(InputError, match="K2_FORMAT"):
        load_settings({"K2_FORMAT": "protobuf"})
    assert load_settings({}).schema_registry_url == "http://127.0.0.1:8081/apis/ccompat/v7"
