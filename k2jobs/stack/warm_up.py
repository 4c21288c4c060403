"""Warming a freshly started broker before `stack up` returns, so the first job loads as fast as later ones.

A fresh Kafka broker runs its request path in the JVM's interpreter until the JIT has compiled it: its CPU per
load keeps falling over its first loads, and the first job after a cold `stack up` is much slower than later ones
(docs/performance.md, "The first job after `stack up`"). Coordinators, internal topics and workers are
ready before that; this sends the broker what k2jobs' chunks send it -- lz4 batches of trade values in JSON and in
Avro with k2jobs' headers, in transactions -- to a private topic, for a few seconds and on while the rest of the
stack starts, then deletes the topic. `stack up` starts the registry beside the brokers, so the warm-up has the
machine nearly to itself, and two producers send in turn (one commits while the other sends): far more messages in
the same time than one producer beside the registry's start. What is left after that is the JIT's long tail: the
broker's CPU per job keeps falling for tens of millions of messages, and warming in smaller batches (more requests)
would only make the first job compile more.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from k2jobs.background import Meanwhile
from k2jobs.config import Settings
from k2jobs.errors import K2Error
from k2jobs.kafka.producer import ChunkTransaction
from k2jobs.kafka.topics import admin_client, topic_replication
from k2jobs.plan.model import Kind
from k2jobs.rows.avro import AvroRowParser
from k2jobs.rows.batches import Headers
from k2jobs.rows.json_rows import RowParser

log = logging.getLogger(__name__)
WARM_UP_TOPIC = "k2jobs.warm-up"
KEYS = 64  # spread over every partition, as many symbols' chunks are
BATCH = 1_000  # messages a send_batch call queues, as a chunk's batch does
TRANSACTION = 100_000  # messages a transaction holds, as a big chunk's does
PRODUCERS = 2  # in turn, as a 2-worker stack's chunks: one commits while the other sends
MAX_EXTRA_S = 30.0  # warming on while the rest of the stack starts: never more than this past `seconds`


def warm_up_values(rows: int = 2 * BATCH) -> dict[str, list[bytes]]:
    """Trade values as chunks write them, from made-up rows that vary like real ones (times, prices, volumes)."""
    lines = [
        f"03/10/2014,10:{n // 600 % 60:02d}:{n // 10 % 60:02d}.{n % 1000:03d},{36 + n % 97 / 100:.2f},{100 + n % 900},"
        f"{n % 4},XT,{'' if n % 3 else 'B1'}"
        for n in range(rows)
    ]
    now_ms = int(time.time() * 1000)
    json_rows = RowParser(Kind.TRADE, "WARM", 1)
    avro_rows = AvroRowParser(Kind.TRADE, "WARM", 1, "trades/1.csv:", schema_id=1)
    json_values = [json_rows.parse_line(line, now_ms) for line in lines]
    avro_values = [avro_rows.parse_line(line, now_ms * 1000, n + 1) for n, line in enumerate(lines)]
    return {"json": [v for v in json_values if v], "avro": [v for v in avro_values if v]}


def warm_broker(settings: Settings, seconds: float, rest_ready: threading.Event | None = None) -> dict[str, Any]:
    """Send k2jobs-like traffic to WARM_UP_TOPIC for about `seconds`, and on while the rest of the stack starts
    (until `rest_ready` is set, at most MAX_EXTRA_S more), in whole transactions, at least one (the first producer on
    a fresh broker also creates Kafka's transaction log); then delete the topic.
    What was sent; raises K2Error if Kafka refuses (the caller decides whether that matters)."""
    from confluent_kafka.admin import NewTopic

    admin = admin_client(settings)
    factor, min_isr = topic_replication(settings, len(admin.list_topics(timeout=30).brokers))  # as k2jobs' topics
    topic = NewTopic(WARM_UP_TOPIC, settings.partitions, factor, config={"min.insync.replicas": str(min_isr)})
    created = admin.create_topics([topic], request_timeout=30)
    try:
        created[WARM_UP_TOPIC].result()
    except Exception as exc:  # noqa: BLE001 - left over from a run that stopped before deleting it: reused
        if "already exists" not in str(exc).lower():
            raise K2Error(f"broker warm-up: cannot create {WARM_UP_TOPIC}: {exc}") from exc
    values = warm_up_values()
    started = time.monotonic()
    failed = threading.Event()  # one sender failed: the other stops after its transaction

    def more() -> bool:
        elapsed = time.monotonic() - started
        rest_starting = rest_ready is not None and not rest_ready.is_set() and elapsed < seconds + MAX_EXTRA_S
        return not failed.is_set() and (elapsed < seconds or rest_starting)

    try:
        senders = [
            Meanwhile(functools.partial(_send_transactions, settings, str(n), values, more), f"k2jobs-warm-up-{n}")
            for n in range(PRODUCERS)
        ]
        done = []
        for sender in senders:
            try:
                done.append(sender.result())
            except BaseException:
                failed.set()
                raise
    finally:
        for future in admin.delete_topics([WARM_UP_TOPIC], request_timeout=30).values():
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - a topic left behind is harmless: the next warm-up reuses it
                log.warning("broker warm-up: could not delete %s: %s", WARM_UP_TOPIC, exc)
    sent, transactions = sum(d[0] for d in done), sum(d[1] for d in done)
    return {"seconds": round(time.monotonic() - started, 1), "messages": sent, "transactions": transactions}


def _send_transactions(
    settings: Settings, name: str, values: dict[str, list[bytes]], more: Callable[[], bool]
) -> tuple[int, int]:
    """One producer's share of the warm-up: whole transactions, JSON and Avro in turn, at least one, while `more()`.
    (messages sent, transactions)."""
    keys = [f"WARM.W{n:02d}".encode() for n in range(KEYS)]
    headers: list[Headers] = [[("job_id", b"warm-up"), ("source", b"trades/1.csv:%d" % (n + 1))] for n in range(BATCH)]
    sent = transactions = 0
    txn = ChunkTransaction(settings, f"warm-up-{os.uname().nodename}-{os.getpid()}-{name}", 0)
    for value_format in itertools.cycle(("json", "avro")):
        if transactions and not more():
            break
        txn.begin()
        rows = values[value_format]
        try:
            for n in range(TRANSACTION // BATCH):
                start = n * BATCH % len(rows)
                txn.send_batch(WARM_UP_TOPIC, keys[(sent // BATCH) % KEYS], rows[start : start + BATCH], headers)
                sent += BATCH
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        transactions += 1
    return sent, transactions
