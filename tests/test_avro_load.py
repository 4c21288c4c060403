"""Avro loads against the real registry (Apicurio), Kafka broker and workers: read back, refusals, restarts."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from k2jobs.kafka.registry import register_schemas
from k2jobs.plan.model import Kind
from k2jobs.rows.avro import subject
from k2jobs.stack.control import Stack
from k2jobs.stack.processes import stop

from .conftest import DATA_ROOT, PORT_SHIFT, run_k2
from .reference import expected_avro_record, source_lines
from .test_load import SAMPLE_ROWS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNUSED_REGISTRY = f"http://127.0.0.1:{18081 + PORT_SHIFT + 50}/apis/ccompat/v7"  # inside this slot's range


@pytest.fixture(scope="module")
def registry(settings) -> SchemaRegistryClient:  # type: ignore[no-untyped-def]
    return SchemaRegistryClient({"url": settings.schema_registry_url})


def micros(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def submit(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    done = run_k2("submit", *args, "--json", "--again", env=env)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


def write_input(workdir: Path, trades: bytes) -> str:
    (workdir / "trades").mkdir()
    (workdir / "reference-data").mkdir()
    (workdir / "reference-data" / "company_info.csv").write_text("company_id,symbol\n7078,BHP\n")
    (workdir / "trades" / "7078.csv").write_bytes(trades)
    return str(workdir.relative_to(DATA_ROOT))


def test_sample_in_avro_is_read_back_field_by_field(stack, settings, registry, read_back) -> None:  # type: ignore[no-untyped-def]
    started_us = int(time.time() * 1_000_000)
    code, report, stderr = submit("sample", "--format", "avro", "--chunk-rows", "30000")
    assert code == 0, stderr
    assert report["totals"] == {"rows": 170_332, "published": 170_332, "rejected": 0}
    assert {f["path"]: f["published"] for f in report["files"]} == SAMPLE_ROWS
    schema_ids = {kind: registry.get_latest_version(subject(kind)).schema_id for kind in Kind}

    deserialize = AvroDeserializer(registry)
    lines = {path: source_lines(DATA_ROOT / "sample", path) for path in SAMPLE_ROWS}
    sources: Counter[str] = Counter()
    for msg in read_back(report["job_id"]):
        kind = Kind(msg.path.split("/")[0])
        assert msg.topic == kind.topic, msg.value
        assert msg.value[:5] == b"\x00" + schema_ids[kind].to_bytes(4, "big")
        sources[msg.source] += 1
        line_no = int(msg.source.rsplit(":", 1)[1])
        record = deserialize(msg.value, SerializationContext(msg.topic, MessageField.VALUE))
        assert msg.key == f"ASX.{record['symbol']}".encode()
        ingested = micros(record.pop("ingestion_timestamp"))
        assert started_us - 5_000_000 <= ingested <= int(time.time() * 1_000_000)
        record["timestamp"] = micros(record["timestamp"])
        expected = expected_avro_record(
            kind.value, int(Path(msg.path).stem), msg.path, line_no, lines[msg.path][line_no], 0
        )
        del expected["ingestion_timestamp"]
        assert record == expected
    assert sum(sources.values()) == 170_332 and max(sources.values()) == 1

    done = run_k2("verify", report["job_id"], "--json")
    assert done.returncode == 0, done.stdout
    assert all(f["malformed"] == 0 for f in json.loads(done.stdout)["files"])


def test_k2_format_selects_avro_and_dead_letters_stay_json(stack, registry, workdir, read_back) -> None:  # type: ignore[no-untyped-def]
    relative = write_input(
        workdir, b"03/10/2014,07:57:14.754,36.66700001,20000,3,,B7\r\n03/10/2014,07:57:15,1.123456789,1,0,,\r\n"
    )
    code, report, stderr = submit(relative, env={"K2_FORMAT": "avro"})
    assert code == 1, stderr
    assert report["totals"] == {"rows": 2, "published": 1, "rejected": 1}
    messages = {msg.topic: msg for msg in read_back(report["job_id"])}
    record = AvroDeserializer(registry)(messages[Kind.TRADE.topic].value, SerializationContext("t", MessageField.VALUE))
    assert str(record["price"]) == "36.66700001"
    assert record["vendor_data"] == {"company_id": "7078", "qualifiers": "3", "buyer_id": "B7"}
    assert record["message_id"] == "trades/7078.csv:1:1394398634754000"
    dead = orjson.loads(messages[Kind.TRADE.dlq_topic].value)
    assert dead["line"] == 2 and "more than 8 decimal places" in dead["error"]
    assert messages[Kind.TRADE.dlq_topic].source == "trades/7078.csv:2"


def test_an_unreachable_registry_refuses_an_avro_submit_and_enqueues_nothing(stack, ledger, workdir) -> None:  # type: ignore[no-untyped-def]
    relative = write_input(workdir, b"03/10/2014,07:57:14.754,36.667,20000,3,,\r\n")
    jobs_before = ledger.recent_jobs(1000)
    done = run_k2("submit", relative, "--again", "--format", "avro", env={"K2_SCHEMA_REGISTRY_URL": UNUSED_REGISTRY})
    assert done.returncode == 7, done.stderr
    assert "schema registry" in done.stderr and UNUSED_REGISTRY in done.stderr
    assert ledger.recent_jobs(1000) == jobs_before
    # JSON does not need the registry.
    done = run_k2("submit", relative, "--again", "--format", "json", env={"K2_SCHEMA_REGISTRY_URL": UNUSED_REGISTRY})
    assert done.returncode == 0, done.stderr


def test_registry_stopped_refuses_then_restarts_with_its_schemas_on_disk(stack, settings, ledger, workdir) -> None:  # type: ignore[no-untyped-def]
    relative = write_input(workdir, b"03/10/2014,07:57:14.754,36.667,20000,3,,\r\n")
    ids_before = register_schemas(settings)
    assert stop(Stack(settings)._probe("registry"))
    jobs_before = ledger.recent_jobs(1000)
    done = run_k2("submit", relative, "--again", "--format", "avro")
    assert done.returncode == 7, done.stderr
    assert ledger.recent_jobs(1000) == jobs_before
    up = run_k2("stack", "up", "--json", timeout=300)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["registry"]["pid"] is not None
    status = json.loads(run_k2("stack", "status", "--json").stdout)
    assert status["registry"] == {"pid": json.loads(up.stdout)["registry"]["pid"], "url": settings.schema_registry_url}
    assert register_schemas(settings) == ids_before, "the restarted registry lost its schemas"
    assert run_k2("submit", relative, "--again", "--format", "avro").returncode == 0


INCOMPATIBLE = json.dumps(
    {"type": "record", "name": "TradeV2", "namespace": "com.k2.marketdata", "fields": [{"name": "x", "type": "int"}]}
)


def test_an_incompatible_subject_refuses_an_avro_submit(stack, settings, registry, ledger, workdir) -> None:  # type: ignore[no-untyped-def]
    relative = write_input(workdir, b"03/10/2014,07:57:14.754,36.667,20000,3,,\r\n")
    name = subject(Kind.TRADE)
    assert registry.get_config().compatibility_level.value == "BACKWARD"  # set by `stack up`
    registry.delete_subject(name)
    registry.delete_subject(name, permanent=True)
    try:
        registry.register_schema(name, Schema(INCOMPATIBLE, "AVRO"))
        jobs_before = ledger.recent_jobs(1000)
        done = run_k2("submit", relative, "--again", "--format", "avro")
        assert done.returncode == 2, done.stderr
        assert name in done.stderr and "not compatible" in done.stderr
        assert ledger.recent_jobs(1000) == jobs_before
    finally:
        registry.delete_subject(name)
        registry.delete_subject(name, permanent=True)
    assert run_k2("submit", relative, "--again", "--format", "avro").returncode == 0


def test_reloading_with_again_keeps_each_rows_message_id(stack, registry, workdir, read_back) -> None:  # type: ignore[no-untyped-def]
    """Downstream storage deduplicates on message_id: a deliberate reload must give every row the same id."""
    lines = (DATA_ROOT / "sample" / "trades" / "7181.csv").read_bytes()
    relative = write_input(workdir, lines)
    deserialize = AvroDeserializer(registry)
    ids = []
    for options in (("--chunk-rows", "100"), ("--chunk-rows", "1000", "--unordered")):
        code, report, stderr = submit(relative, "--format", "avro", *options)
        assert code == 0, stderr
        context = SerializationContext(Kind.TRADE.topic, MessageField.VALUE)
        ids.append({m.source: deserialize(m.value, context)["message_id"] for m in read_back(report["job_id"])})
    assert len(ids[0]) == 232 and ids[0] == ids[1]
    assert len(set(ids[0].values())) == 232  # and every row has its own
