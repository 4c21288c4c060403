"""Commit markers: "did this chunk commit?", answered from Kafka, never "no" while a marker is hidden.

Every chunk's transaction ends with one marker record on partition 0 of `k2jobs.commits`, so "the chunk is
in Kafka" and "its marker is committed" are one fact. A read_committed consumer sees the partition only up to
its last stable offset (LSO), the start of the oldest open transaction, so a read_committed scan can miss a
committed marker written after someone else's open transaction. The check therefore scans read_uncommitted
(every marker record, committed or aborted, up to the real end) and resolves only the records that carry the
chunk's key: it waits until the LSO has passed such a record (bounded), then asks the read_committed side
whether that record is committed. No record with the key means no commit, at once; a record not yet
resolvable raises MarkerHidden (the attempt retries later), never "no".
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from k2jobs.config import Settings
from k2jobs.errors import PublishError

COMMITS_TOPIC = "k2jobs.commits"
COMMITS_PARTITION = 0  # explicit: the topic is refused unless it has exactly this one partition
POLL_S = 0.2
TRANSIENT = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
)


class MarkerHidden(PublishError):
    """A chunk's marker record lies in a transaction that is still open: whether it committed is not known yet."""


def marker_key(job_id: str, chunk_index: int) -> bytes:
    return f"{job_id}:{chunk_index}".encode()


class MarkerLog(Protocol):
    """The marker partition, as the committed check needs it."""

    def end(self) -> int:
        """The partition's end, open transactions included."""

    def stable_end(self) -> int:
        """The last stable offset: every transaction with a record below it has committed or aborted."""

    def records(self, start: int, end: int) -> Iterator[tuple[int, bytes | None, bytes | None]]:
        """(offset, key, value) of every data record in [start, end), committed, open or aborted."""

    def first_committed(self, offset: int) -> int | None:
        """The offset of the first committed record at or after `offset` and below the LSO, or None."""


class CommitMarkers:
    """Finds a chunk's committed marker; remembers what it scanned, so a worker reads each marker once."""

    def __init__(
        self,
        log: MarkerLog,
        wait_s: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.wait_s, self._sleep, self._clock = log, wait_s, sleep, clock
        self._seen: dict[bytes, list[tuple[int, bytes | None]]] = {}
        self._scanned = (0, 0)  # [low, high) offsets whose records are in _seen

    def find(self, key: bytes, start: int) -> dict[str, Any] | None:
        """The committed marker of `key` at or after offset `start` (its counts), or None if there is none.

        Call it only after fencing the chunk's transactional id: then no attempt of the chunk can still add a
        marker, and every marker record it wrote lies below the end read here.
        """
        end = self.log.end()
        for offset, value in reversed(self._records_of(key, start, end)):
            if self._is_committed(offset):
                return orjson.loads(value or b"null")  # type: ignore[no-any-return]
        return None

    def _records_of(self, key: bytes, start: int, end: int) -> list[tuple[int, bytes | None]]:
        low, high = self._scanned
        if not low <= start <= high or len(self._seen) > 1_000_000:
            self._seen, low, high = {}, start, start
        for offset, record_key, value in self.log.records(high, end):
            if record_key is not None:
                self._seen.setdefault(record_key, []).append((offset, value))
        self._scanned = (low, max(high, end))
        return [(offset, value) for offset, value in self._seen.get(key, []) if offset >= start]

    def _is_committed(self, offset: int) -> bool:
        deadline = self._clock() + self.wait_s
        while self.log.stable_end() <= offset:
            if self._clock() >= deadline:
                raise MarkerHidden(
                    f"a marker at {COMMITS_TOPIC} offset {offset} is still in an open transaction after "
                    f"{self.wait_s:.0f}s: whether the chunk committed is not known yet"
                )
            self._sleep(POLL_S)
        return self.log.first_committed(offset) == offset


def marker_consumer_config(settings: Settings, isolation: str) -> dict[str, object]:
    """librdkafka configuration of a consumer that reads commit markers back."""
    return settings.kafka_consumer_config(
        **{
            "group.id": "k2jobs-marker-reader",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )


class KafkaMarkerLog:
    """The marker partition through two consumers: read_uncommitted for the scan, read_committed to resolve."""

    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self._configs = {i: marker_consumer_config(settings, i) for i in ("read_uncommitted", "read_committed")}
        # Made on first use, not while a worker's pool process starts: Celery kills a pool process that has not
        # reported in within 4 s, and librdkafka is not fork-safe (a client made right after the fork may wait on
        # a lock a thread of the parent held). Seen once with the broker down: new pool processes never reported
        # in, and Celery killed them every 4 s for minutes.
        self._consumers: dict[str, Consumer] = {}
        self._tp = TopicPartition(COMMITS_TOPIC, COMMITS_PARTITION)
        self.timeout_s = timeout_s

    def _renew(self, isolation: str) -> None:
        """A new consumer, which asks the cluster where the partition's leader is now.

        With nothing assigned, the old one kept a dead leader until its next metadata refresh (5 minutes by
        default): every check failed that long after the leader was killed (tests/test_cluster.py).
        """
        with contextlib.suppress(KafkaException, RuntimeError, KeyError):
            self._consumers.pop(isolation).close()
        self._consumers[isolation] = Consumer(self._configs[isolation])

    def _consumer(self, isolation: str) -> Consumer:
        if isolation not in self._consumers:
            self._consumers[isolation] = Consumer(self._configs[isolation])
        return self._consumers[isolation]

    def _high(self, isolation: str) -> int:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return int(self._consumer(isolation).get_watermark_offsets(self._tp, self.timeout_s, cached=False)[1])
            except KafkaException as exc:
                self._renew(isolation)
                # A topic just created has no leader for a moment; a leader change moves it.
                if exc.args[0].code() not in TRANSIENT or time.monotonic() >= deadline:
                    raise PublishError(f"cannot read {COMMITS_TOPIC} offsets ({isolation}): {exc.args[0]}") from exc
            time.sleep(POLL_S)

    def end(self) -> int:
        return self._high("read_uncommitted")

    def stable_end(self) -> int:
        return self._high("read_committed")  # a read_committed consumer's high watermark is the LSO

    def _read(self, isolation: str, start: int, end: int) -> Iterator[Any]:
        """Messages from `start` until the position reaches `end` or the partition's end."""
        consumer = self._consumer(isolation)
        consumer.assign([TopicPartition(COMMITS_TOPIC, COMMITS_PARTITION, start)])
        deadline = time.monotonic() + self.timeout_s
        try:
            while time.monotonic() < deadline:
                msg = consumer.poll(POLL_S)
                error = None if msg is None else msg.error()
                if msg is not None and error is None:
                    deadline = time.monotonic() + self.timeout_s  # moving: the timeout is for silence
                    yield msg
                elif error is not None and error.code() == KafkaError._PARTITION_EOF:
                    return
                elif error is not None:
                    raise PublishError(f"reading {COMMITS_TOPIC}: {error}")
                if consumer.position([self._tp])[0].offset >= end:
                    return
        finally:
            consumer.unassign()
        self._renew(isolation)
        raise PublishError(f"timed out reading {COMMITS_TOPIC} from offset {start} ({isolation})")

    def records(self, start: int, end: int) -> Iterator[tuple[int, bytes | None, bytes | None]]:
        if end <= start:
            return
        for msg in self._read("read_uncommitted", start, end):
            if msg.offset() >= end:
                return
            yield msg.offset(), msg.key(), msg.value()

    def first_committed(self, offset: int) -> int | None:
        for msg in self._read("read_committed", offset, self.stable_end()):
            return int(msg.offset())
        return None

    def close(self) -> None:
        for consumer in self._consumers.values():
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.close()


class MarkerReader(CommitMarkers):
    """CommitMarkers on the real marker partition; one per worker process."""

    def __init__(self, settings: Settings, wait_s: float | None = None) -> None:
        # Each read gives up well inside the chunk's time limit: the attempt then retries (a leader moving).
        self.kafka_log = KafkaMarkerLog(settings, timeout_s=min(10.0, settings.chunk_time_limits_s[0] / 4))
        # An open transaction holds the LSO for at most its timeout (plus the coordinator's abort sweep);
        # beyond the chunk's own time limit the attempt gives up and retries.
        super().__init__(self.kafka_log, wait_s if wait_s is not None else settings.chunk_time_limits_s[0] / 2)

    def close(self) -> None:
        self.kafka_log.close()


def marker_end(settings: Settings) -> int:
    """The marker partition's end now: every marker of a job created after this lies at or past it."""
    log = KafkaMarkerLog(settings)
    try:
        return log.end()
    finally:
        log.close()
