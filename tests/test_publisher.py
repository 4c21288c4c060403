"""The compiled send (k2jobs/_fastrows.c send) on a real broker: what it queues is what confluent-kafka's
produce() would have queued, in the producer's own transaction, and a message the broker refuses fails the
commit although no delivery report is asked for."""

from __future__ import annotations

import functools
import os
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

from k2jobs.config import load_settings
from k2jobs.errors import PublishError
from k2jobs.kafka.compiled_send import COMPILED_SEND
from k2jobs.kafka.producer import ChunkTransaction
from k2jobs.kafka.topics import admin_client
from k2jobs.rows.batches import ChunkRows

from .conftest import SAMPLE
from .test_fastrows import chunk_of

pytestmark = pytest.mark.integration


def new_topic(settings, **config: str) -> str:  # type: ignore[no-untyped-def]
    name = f"k2-test-send-{uuid.uuid4().hex[:8]}"
    admin = admin_client(settings)
    [future] = admin.create_topics([NewTopic(name, 1, 1, config=config)]).values()
    future.result()
    return name


def committed(settings, topic: str) -> list[tuple[bytes, bytes, list]]:  # type: ignore[no-untyped-def,type-arg]
    """Every committed message of the topic's one partition: (key, value, headers)."""
    conf = settings.kafka_consumer_config(
        **{"group.id": f"k2-test-{uuid.uuid4().hex}", "isolation.level": "read_committed"}
    )
    consumer = Consumer(conf)
    consumer.assign([TopicPartition(topic, 0, 0)])
    found = []
    try:
        while (msg := consumer.poll(3)) is not None:  # 3 s without a message: the end
            assert msg.error() is None, msg.error()
            found.append((msg.key(), msg.value(), msg.headers()))
    finally:
        consumer.close()
    return found


def messages(count: int, size: int = 150) -> tuple[list[bytes], list[list[tuple[str, bytes | None]]]]:
    values = [f"{i:08d}".encode().ljust(size, b"x") for i in range(count)]
    headers = [[("job_id", b"job-1"), ("source", f"trades/7078.csv:{i + 1}".encode())] for i in range(count)]
    return values, headers


def test_chunk_producers_use_the_compiled_send(stack, settings) -> None:  # type: ignore[no-untyped-def]
    assert COMPILED_SEND, "the compiled send did not find confluent-kafka's librdkafka"
    txn = ChunkTransaction(settings, uuid.uuid4().hex, 0)
    assert txn._compiled


def test_the_compiled_send_queues_every_message_in_order_through_a_full_queue(stack) -> None:  # type: ignore[no-untyped-def]
    # A local queue of 1,000 messages: 20,000 messages fill it again and again (QUEUE_FULL, poll, resume).
    settings = load_settings({**os.environ, "K2_KAFKA_OPT_QUEUE_BUFFERING_MAX_MESSAGES": "1000"})
    topic = new_topic(settings)
    values, headers = messages(20_000)
    headers[7] = [("job_id", b"job-1"), ("empty", None)]
    txn = ChunkTransaction(settings, uuid.uuid4().hex, 0)
    assert txn._compiled
    txn.begin()
    txn.send_batch(topic, b"BHP", values, headers)
    txn.commit()
    found = committed(settings, topic)
    assert [v for _, v, _ in found] == values
    assert {k for k, _, _ in found} == {b"BHP"}
    assert [h for _, _, h in found] == [[tuple(pair) for pair in h] for h in headers]


def test_a_message_the_broker_refuses_fails_the_commit_and_nothing_is_visible(stack, settings) -> None:  # type: ignore[no-untyped-def]
    topic = new_topic(settings, **{"max.message.bytes": "2000"})
    values, headers = messages(100)
    values[50] = os.urandom(5000)  # incompressible; within the producer's limits, over the topic's: refused
    txn = ChunkTransaction(settings, uuid.uuid4().hex, 0)
    assert txn._compiled
    txn.begin()
    txn.send_batch(topic, b"BHP", values, headers)
    with pytest.raises(PublishError, match="Message size too large"):
        txn.commit()
    assert committed(settings, topic) == []


ODD_LINES = [
    b"",  # blank: skipped, not counted
    b'03/10/2014,10:05:44.516,"37.51",40000,3,XT,B7',  # quoted: deferred, accepted by Python
    b"03/10/2014,10:05:44.516,not a price,40000,3,XT,B7",  # rejected: a dead letter with its reason
    "03/10/2014,10:05:44.516,37.51,40000,3,Zürich,B7".encode(),  # not ASCII: deferred, accepted
    b"04/06/2014,02:30:00,1.5,100,0,X,B",  # an hour the clocks repeat: the fast path hands it to Python
]


def chunk_rows_with_odd_lines(kind: str, compiled: bool) -> ChunkRows:
    """The sample's biggest file of `kind`, with ODD_LINES among its rows (every 700th line), and the last
    line without its line ending."""
    path = max((SAMPLE / kind).glob("*.csv"), key=lambda p: p.stat().st_size)
    lines = path.read_bytes().split(b"\r\n")[:6000]
    for at, odd in zip(range(700, 6000, 700), ODD_LINES * 3, strict=False):
        lines.insert(at, odd if kind == "trades" or not odd.startswith(b"0") else b"03/10/2014,10:05:44,1,2,x,4")
    data = b"\r\n".join(lines).rstrip(b"\r\n")
    return ChunkRows(data, chunk_of(data, kind), "job-1", compiled=compiled, ingestion_ms=1_700_000_000_000)


@pytest.mark.parametrize("kind", ["trades", "quotes"])
def test_rows_parsed_and_queued_in_c_are_the_messages_python_sends(stack, settings, kind: str) -> None:  # type: ignore[no-untyped-def]
    """The fused compiled path (FastRows.send) against the pure-Python one, each into its own topics through a
    real transaction: the same keys, values, headers and dead letters, in the same order, and the same counts."""
    found, counts = [], []
    for compiled in (True, False):
        data_topic, dead_topic = new_topic(settings), new_topic(settings)
        rows = chunk_rows_with_odd_lines(kind, compiled)
        txn = ChunkTransaction(settings, uuid.uuid4().hex, 0)
        assert txn.compiled
        txn.begin()
        queue = functools.partial(txn.queue_rows, data_topic) if compiled else None
        for batch in rows.batches(1000, queue):
            assert not compiled or len(batch.values) + len(batch.dead) <= 1  # only the deferred line is Python's
            txn.send_batch(data_topic, rows.key, batch.values, batch.headers)
            txn.send_batch(dead_topic, rows.key, batch.dead, batch.dead_headers)
        txn.commit()
        found.append((committed(settings, data_topic), committed(settings, dead_topic)))
        counts.append(rows.counts())
    assert found[0] == found[1]
    assert counts[0] == counts[1]
    assert counts[0]["published"] == len(found[0][0]) > 5000
    assert counts[0]["rejected"] == len(found[0][1]) >= 1
