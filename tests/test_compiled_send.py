"""The compiled send's layout check (k2jobs/kafka/compiled_send.py, _fastrows.c verify_handle): it passes on
confluent-kafka's real Producer, and a Producer that does not hold its librdkafka handle where k2jobs reads it
makes the process fall back to produce() with one warning, without crashing it; no broker needed."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from k2jobs.config import load_settings
from k2jobs.kafka import compiled_send, producer
from k2jobs.kafka.compiled_send import COMPILED_SEND, _fastrows, compiled_send_on, layout_mismatch
from k2jobs.kafka.producer import ChunkTransaction

pytestmark = pytest.mark.skipif(not COMPILED_SEND, reason="the compiled send is not built or K2_COMPILED_SEND=0")

NO_BROKER = "127.0.0.1:1"  # refuses at once: nothing here waits for a broker
QUIET = {"bootstrap.servers": NO_BROKER, "log_level": 0}  # no "connect failed" lines from librdkafka
# Other words of confluent-kafka's Handle, where a confluent-kafka with another layout could have moved `rk`:
POINTER = struct.calcsize("P")
REFCOUNT_OFFSET = 0  # ob_refcnt, a small integer: read as a pointer, it faults
TYPE_OFFSET = POINTER  # ob_type: readable memory, but no librdkafka name in it
ERROR_CB_OFFSET = compiled_send.HANDLE_OFFSET + POINTER  # Handle.error_cb: NULL without an error_cb


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if this process had not checked the layout yet (the session's verdict is put back afterwards)."""
    monkeypatch.setattr(compiled_send, "_verdict", None)


@pytest.fixture
def real_producer() -> Iterator[Producer]:
    p = Producer({**QUIET, "client.id": "k2-layout-test"})
    yield p
    p.purge()
    p.flush(0)


class RecordingProducer(Producer):  # type: ignore[misc]
    """A real Producer (same C layout) whose transaction calls are no-ops and whose produce() is recorded."""

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__({**conf, **QUIET})
        self.produced: list[tuple[Any, ...]] = []

    def init_transactions(self, *args: Any) -> None:
        pass

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.produced.append(args)

    def poll(self, *args: Any) -> int:
        return 0


@pytest.fixture
def chunk_transaction(monkeypatch: pytest.MonkeyPatch) -> Iterator[ChunkTransaction]:
    monkeypatch.setattr(producer, "Producer", RecordingProducer)
    txn = ChunkTransaction(load_settings({"K2_KAFKA_BOOTSTRAP": NO_BROKER}), "job-layout", 0)
    yield txn
    txn._producer.purge()
    txn._producer.flush(0)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == compiled_send.__name__ and r.levelno >= logging.WARNING]


def test_the_handle_is_where_the_compiled_send_reads_it(real_producer: Producer) -> None:
    assert compiled_send.HANDLE_OFFSET == _fastrows.HANDLE_OFFSET
    assert _fastrows.verify_handle(real_producer, compiled_send.HANDLE_OFFSET, 10.0).startswith(
        b"k2-layout-test#producer-"
    )
    assert layout_mismatch(real_producer, "k2-layout-test") is None


def test_the_check_passes_once_and_chunk_producers_send_compiled(
    fresh_process: None, chunk_transaction: ChunkTransaction, caplog: pytest.LogCaptureFixture
) -> None:
    assert chunk_transaction.compiled
    assert compiled_send._verdict is True
    assert warnings_of(caplog) == []


def test_a_handle_elsewhere_falls_back_to_produce_with_one_warning(
    fresh_process: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compiled_send, "HANDLE_OFFSET", ERROR_CB_OFFSET)  # a confluent-kafka that moved `rk`
    monkeypatch.setattr(producer, "Producer", RecordingProducer)
    settings = load_settings({"K2_KAFKA_BOOTSTRAP": NO_BROKER})
    txns = [ChunkTransaction(settings, "job-layout", i) for i in range(2)]
    try:
        assert [txn.compiled for txn in txns] == [False, False]
        txns[0].send_batch("topic", b"key", [b"v1", b"v2"], [[("job_id", b"j")], [("job_id", b"j")]])
        recorded = txns[0]._producer
        assert isinstance(recorded, RecordingProducer)
        assert [args[:3] for args in recorded.produced] == [("topic", b"v1", b"key"), ("topic", b"v2", b"key")]
    finally:
        for txn in txns:
            txn._producer.purge()
            txn._producer.flush(0)
    [warning] = warnings_of(caplog)  # one for the process, not one per producer
    assert "produce()" in warning and "NULL" in warning


def test_a_child_killed_by_the_read_is_a_mismatch_and_this_process_lives_on(
    fresh_process: None, monkeypatch: pytest.MonkeyPatch, real_producer: Producer, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compiled_send, "HANDLE_OFFSET", REFCOUNT_OFFSET)
    assert "signal 11" in (layout_mismatch(real_producer, "k2-layout-test") or "")
    assert not compiled_send_on(real_producer, "k2-layout-test")
    assert not compiled_send_on(real_producer, "k2-layout-test")  # the verdict is kept: no second child
    [warning] = warnings_of(caplog)
    assert "killed the child" in warning


def test_a_pointer_to_something_else_is_a_mismatch(monkeypatch: pytest.MonkeyPatch, real_producer: Producer) -> None:
    assert layout_mismatch(real_producer, "another-client") is not None  # the name must be this producer's
    monkeypatch.setattr(compiled_send, "HANDLE_OFFSET", TYPE_OFFSET)
    assert layout_mismatch(real_producer, "k2-layout-test") is not None  # a name, or none, but not this one


@pytest.mark.parametrize(
    ("obj", "reason"),
    [(object(), "is not a confluent_kafka.Producer"), (b"bytes", "is not a confluent_kafka.Producer")],
)
def test_what_is_not_a_producer_is_a_mismatch_without_a_child(obj: object, reason: str) -> None:
    assert reason in (layout_mismatch(obj, "rdkafka") or "")


def test_an_offset_outside_the_object_is_refused_without_a_child(real_producer: Producer) -> None:
    with pytest.raises(RuntimeError, match="not a pointer inside"):
        _fastrows.verify_handle(real_producer, 1 << 20, 10.0)


@pytest.mark.parametrize(
    ("name", "client_id", "ok"),
    [
        (b"rdkafka#producer-12", "rdkafka", True),
        (b"rdkafka#producer-", "rdkafka", False),
        (b"rdkafka#consumer-3", "rdkafka", False),
        (b"other#producer-3", "rdkafka", False),
        (b"\x97{\x9c\xf2*\x7f", "rdkafka", False),
        (b"c" * 127, "c" * 200, True),  # librdkafka cut the name inside a long client.id
        (b"c" * 100, "c" * 200, False),
    ],
)
def test_the_name_must_be_the_one_librdkafka_gives_this_producer(name: bytes, client_id: str, ok: bool) -> None:
    assert compiled_send._is_producer_name(name, client_id) is ok


def test_compiled_send_off_checks_nothing(
    fresh_process: None, monkeypatch: pytest.MonkeyPatch, real_producer: Producer, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compiled_send, "COMPILED_SEND", False)  # K2_COMPILED_SEND=0
    assert not compiled_send_on(real_producer, "k2-layout-test")
    assert compiled_send._verdict is None and warnings_of(caplog) == []
