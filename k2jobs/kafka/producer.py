"""The Kafka side: topics, transactional chunk producers, commit markers."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from k2jobs.config import TRANSACTION_TIMEOUT_MS, Settings
from k2jobs.errors import PublishError
from k2jobs.kafka.compiled_send import _fastrows, compiled_send_on
from k2jobs.rows.batches import Headers

# Tunable through K2_KAFKA_OPT_* (e.g. K2_KAFKA_OPT_COMPRESSION_TYPE=zstd); exactness does not depend on them.
PRODUCER_DEFAULTS: dict[str, object] = {
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
    # Bounded: a full queue makes produce() wait, memory stays flat. librdkafka counts payload bytes only, and
    # its own per-message structures come on top: with messages queued from C the queue is often full, and at
    # 32 MB a worker peaked at 166-191 MB; at 8 MB, 110 MB, with loads as fast (2M rows, 2 workers, 2 cores).
    "queue.buffering.max.kbytes": 8_192,
    "message.timeout.ms": 45_000,  # below transaction.timeout.ms, as librdkafka requires
    "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
    "partitioner": "murmur2_random",  # the Java client's partitioner: same key, same partition
    # Connect to every broker as soon as metadata names it. With sparse connections, init_transactions
    # often finds no connected broker right after bootstrap and waits for librdkafka's 500 ms
    # coordinator-query timer (measured here: 5 of 30 to 9 of 20 fresh producers waited 0.5 s; with this setting,
    # none of 100, median 3 ms).
    "enable.sparse.connections": False,
}


class ChunkFenced(PublishError):
    """Another attempt at the same chunk took over its transactional id."""


def transactional_id(job_id: str, chunk_index: int) -> str:
    """Stable per chunk, so a re-run fences any earlier attempt of the same chunk."""
    return f"k2jobs-{job_id}-{chunk_index}"


FENCED_CODES = (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)


def _wrap(exc: KafkaException, what: str) -> PublishError:
    err = exc.args[0]
    return _failure(what, err.code(), err.str(), err.fatal())


def _failure(what: str, code: int, reason: str, fatal: bool) -> PublishError:
    # Once fenced, librdkafka fails every later call with a fatal error that is not always _FENCED; a
    # transactional producer's fatal errors all mean this producer is done, and only a new attempt can go on.
    if code in FENCED_CODES or fatal:
        return ChunkFenced(f"{what}: fenced by a newer attempt ({reason})")
    return PublishError(f"{what}: {reason}")


# How long to wait when the local queue is full before trying again. With delivery.report.only.error a poll
# serves no event for a delivered message and sleeps its whole timeout, so the wait is real; but a load is
# CPU-bound and the broker uses the time. Measured on 2 cores, 2M rows: 2 ms made loads slower, not faster.
QUEUE_FULL_WAIT_S = 0.05
# queue_rows polls once this many messages were queued since the last poll, not after every call: a task of
# thousands of small files makes one call per file, and a poll cost ~30 us each (~10% of a worker's time on
# 4,000 files of 90 rows, py-spy). Polling less changes no outcome: a failed delivery fails the commit
# (librdkafka counts it against the transaction), and the commit serves the reports left.
POLL_EVERY_ROWS = 1_000
STOPPED_AT_DEFERRED = 1  # FastRows.send's code for "stopped before a line the compiled parser defers"


@dataclass
class DeliveryErrors:
    """Counts failed deliveries; the producer reports only errors, never each success."""

    count: int = 0
    first: str | None = None

    def __call__(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self.count += 1
            self.first = self.first or err.str()


def producer_config(settings: Settings, transactional_id: str) -> dict[str, object]:
    """librdkafka configuration of a chunk's transactional producer."""
    conf = {**PRODUCER_DEFAULTS, **settings.kafka_config()}  # K2_KAFKA_OPT_* may tune the defaults
    conf.update(
        {
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "delivery.report.only.error": True,
        }
    )
    return conf


class ChunkTransaction:
    """A transactional producer for one chunk: everything it sends commits or aborts together."""

    def __init__(self, settings: Settings, job_id: str, chunk_index: int) -> None:
        self.errors = DeliveryErrors()
        self._unpolled = 0  # messages queued since the last poll
        self._timeout_s = settings.kafka_call_timeout_s
        self._abort_timeout_s = settings.abort_timeout_s
        conf = producer_config(settings, transactional_id(job_id, chunk_index))
        self._producer = Producer({**conf, "on_delivery": self.errors})
        # The compiled send reads the Producer's librdkafka handle: only once this process verified where
        # confluent-kafka keeps it (a confluent-kafka whose Producer layout changed falls back to produce()).
        self._compiled = compiled_send_on(self._producer, str(conf.get("client.id", "rdkafka")), settings.compiled_send)
        try:
            self._producer.init_transactions(self._timeout_s)
        except KafkaException as exc:
            raise _wrap(exc, "init_transactions") from exc

    def begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise _wrap(exc, "begin_transaction") from exc

    def send(self, topic: str, key: bytes, value: bytes, headers: Headers, partition: int = -1) -> None:
        """Queue one message (to `partition` if given), waiting for room when the local queue is full."""
        while True:
            try:
                self._producer.produce(topic, value, key, partition=partition, headers=headers)
                return
            except BufferError:
                self._poll(QUEUE_FULL_WAIT_S)
            except KafkaException as exc:
                raise _wrap(exc, "produce") from exc

    def send_batch(self, topic: str, key: bytes, values: list[bytes], headers: list[Headers]) -> None:
        """Queue many messages, then serve delivery reports; the hot loop of a chunk.

        Compiled, a message costs about half of what produce() costs (1.2 against 1.9-2.5 us in one process,
        measured with the chunks' headers). Its delivery is not reported one by one: a message that fails
        delivery fails the transaction's commit, as librdkafka counts it against the transaction.
        """
        if self._compiled:
            self._send_compiled(topic, key, values, headers)
            return
        produce = self._producer.produce
        try:
            for value, message_headers in zip(values, headers, strict=True):
                try:
                    produce(topic, value, key, headers=message_headers)
                except BufferError:
                    self.send(topic, key, value, message_headers)
        except KafkaException as exc:
            raise _wrap(exc, "produce") from exc
        self._poll(0)

    @property
    def compiled(self) -> bool:
        """Whether `queue_rows` can parse and queue rows in C on this producer."""
        return self._compiled

    def queue_rows(
        self, topic: str, rows: Any, key: bytes, data: bytes, pos: int, line_no: int, max_lines: int, ingestion: int
    ) -> tuple[int, int, int, bool]:
        """Parse up to `max_lines` lines of `data` from byte `pos` with a compiled FastRows and queue their
        messages in C, never making Python objects of them: (queued, pos, line_no, stopped at a line the
        compiled parser defers). Waits for room when the local queue is full."""
        queued = 0
        while True:
            sent, pos, line_no, code, reason, fatal = rows.send(
                self._producer, topic, key, data, pos, line_no, max_lines - queued, ingestion
            )
            queued += sent
            if code == KafkaError._QUEUE_FULL:
                self._poll(QUEUE_FULL_WAIT_S)
                continue
            if code < 0:
                raise _failure("produce", code, reason, bool(fatal))
            self._poll_now_and_then(sent)
            return queued, pos, line_no, code == STOPPED_AT_DEFERRED

    def _send_compiled(self, topic: str, key: bytes, values: list[bytes], headers: list[Headers]) -> None:
        start = 0
        while True:
            start, code, reason, fatal = _fastrows.send(self._producer, topic, key, values, headers, start)
            if code == 0:
                break
            if code != KafkaError._QUEUE_FULL:
                raise _failure("produce", code, reason, bool(fatal))
            self._poll(QUEUE_FULL_WAIT_S)
        self._poll_now_and_then(len(values))

    def _poll_now_and_then(self, queued: int) -> None:
        """Poll once POLL_EVERY_ROWS messages were queued since the last poll."""
        self._unpolled += queued
        if self._unpolled >= POLL_EVERY_ROWS:
            self._poll(0)

    def _poll(self, timeout_s: float) -> None:
        """Serve delivery reports (only failed deliveries make one). confluent-kafka raises a fatal error here
        (fenced while adding a partition to the transaction): as any producer call's, it is a PublishError,
        ChunkFenced when fatal."""
        self._unpolled = 0
        try:
            self._producer.poll(timeout_s)
        except KafkaException as exc:
            raise _wrap(exc, "produce") from exc

    def commit(self) -> None:
        """Flush and commit; raises PublishError (after aborting) if anything failed."""
        try:
            self._producer.commit_transaction(self._timeout_s)
        except KafkaException as exc:
            self.abort()
            raise _wrap(exc, "commit_transaction") from exc
        if self.errors.count:
            raise PublishError(f"{self.errors.count} deliveries failed: {self.errors.first}")

    def abort(self) -> None:
        # Fenced or broker gone: the coordinator aborts it on timeout or fencing anyway.
        with contextlib.suppress(KafkaException):
            self._producer.abort_transaction(self._abort_timeout_s)
