"""Reading a job's messages back from Kafka (read_committed) and checking them against its report."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, cast

from confluent_kafka import Consumer, IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec

from k2jobs.config import Settings
from k2jobs.errors import KafkaUnavailable
from k2jobs.kafka.markers import COMMITS_TOPIC
from k2jobs.kafka.topics import admin_client
from k2jobs.plan.model import JobPlan, Kind
from k2jobs.rows.avro import wire_header
from k2jobs.store.ledger import Ledger


@dataclass(frozen=True)
class JobMessage:
    """One message of a job as read back from Kafka."""

    topic: str
    key: bytes | None
    value: bytes
    source: str  # "<path>:<line>"
    partition: int
    offset: int

    @property
    def path(self) -> str:
        return self.source.rsplit(":", 1)[0]


def job_topics() -> list[str]:
    return [kind.topic for kind in Kind] + [kind.dlq_topic for kind in Kind]


@dataclass(frozen=True)
class StalledPartition:
    """A partition whose committed data ends before its last message: an open (or hanging) transaction."""

    topic: str
    partition: int
    stable_offset: int  # read_committed consumers stop here
    end_offset: int


def read_job_messages(
    settings: Settings,
    job_id: str,
    topics: list[str] | None = None,
    timeout_s: float = 60.0,
    since_ms: int | None = None,
) -> Iterator[JobMessage]:
    """Every committed message whose job_id header is `job_id`, reading each partition to its end.

    With `since_ms` (the job's creation time), reading starts at the first message written after it,
    rather than at the start of every partition.
    """
    consumer = Consumer(
        settings.kafka_consumer_config(
            **{
                "group.id": f"k2jobs-verify-{job_id}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "log_level": 0,
            }
        )
    )
    wanted = job_id.encode()
    try:
        metadata = consumer.list_topics(timeout=10)
        partitions = [
            TopicPartition(t, p, 0)
            for t in (topics or job_topics())
            if t in metadata.topics
            for p in metadata.topics[t].partitions
        ]
        if since_ms is not None and partitions:
            by_time = [TopicPartition(tp.topic, tp.partition, since_ms) for tp in partitions]
            # A partition with nothing written since then answers -1: it has nothing of this job.
            partitions = [tp for tp in consumer.offsets_for_times(by_time, timeout=10) if tp.offset >= 0]
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
        remaining = {(tp.topic, tp.partition) for tp in partitions if ends[(tp.topic, tp.partition)] > tp.offset}
        consumer.assign(partitions)
        idle_since = time.monotonic()
        while remaining:
            batch = consumer.consume(10_000, timeout=0.5)
            if batch:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > timeout_s:
                raise KafkaUnavailable(f"no messages from Kafka for {timeout_s:.0f}s while verifying")
            for msg in batch:
                topic, partition = cast(str, msg.topic()), cast(int, msg.partition())
                if msg.error() is not None:
                    remaining.discard((topic, partition))  # partition EOF (the last stable offset)
                    continue
                offset = cast(int, msg.offset())
                headers = dict(msg.headers() or [])
                if headers.get("job_id") == wanted:
                    source = cast(bytes, headers["source"]).decode()
                    yield JobMessage(topic, msg.key(), cast(bytes, msg.value()), source, partition, offset)
                if offset + 1 >= ends[(topic, partition)]:
                    remaining.discard((topic, partition))
    except KafkaException as exc:
        raise KafkaUnavailable(f"reading back from Kafka failed: {exc.args[0]}") from exc
    finally:
        consumer.close()


def stalled_partitions(settings: Settings, timeout_s: float = 10.0) -> list[StalledPartition]:
    """Partitions of the job topics whose committed end (last stable offset) is short of their end."""
    admin = admin_client(settings)
    try:
        topics = admin.list_topics(timeout=timeout_s).topics
        watched = [*job_topics(), COMMITS_TOPIC]  # a stalled marker partition hides every later commit's marker
        partitions = [TopicPartition(t, p) for t in watched if t in topics for p in topics[t].partitions]
        ends = {}
        for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
            futures = admin.list_offsets(
                {tp: OffsetSpec.latest() for tp in partitions}, isolation_level=level, request_timeout=timeout_s
            )
            ends[level] = {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot read partition offsets: {exc.args[0]}") from exc
    stable, end = ends[IsolationLevel.READ_COMMITTED], ends[IsolationLevel.READ_UNCOMMITTED]
    return [StalledPartition(*tp, stable[tp], end[tp]) for tp in sorted(end) if stable[tp] < end[tp]]


def value_prefixes(plan: JobPlan) -> dict[str, bytes]:
    """How each file's published values must begin: the Avro wire header with the job's schema id, or `{`."""
    return {c.path: wire_header(c.schema_id) if c.value_format == "avro" else b"{" for c in plan.chunks}


def verify_job(settings: Settings, ledger: Ledger, job_id: str) -> dict[str, Any]:
    """Count a job's messages per file and topic and compare with its report."""
    report = ledger.report(job_id)
    plan = ledger.plan(job_id)
    published: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    malformed: Counter[str] = Counter()  # published values not in the job's format (dead letters are JSON)
    prefixes = value_prefixes(plan)
    dlq_topics = {kind.dlq_topic for kind in Kind}
    # Messages carry their producer's timestamp; a minute's margin covers clocks that differ a little.
    since_ms = int(float(ledger.job_meta(job_id)["created"]) * 1000) - 60_000
    for msg in read_job_messages(settings, job_id, since_ms=since_ms):
        (rejected if msg.topic in dlq_topics else published)[msg.path] += 1
        sources[msg.source] += 1
        if msg.topic not in dlq_topics and not msg.value.startswith(prefixes.get(msg.path, b"{")):
            malformed[msg.path] += 1
    duplicates = sum(n - 1 for n in sources.values() if n > 1)
    by_path = {f["path"]: f for f in (report or {}).get("files", [])}
    files = []
    for file in plan.files:
        expected = by_path.get(file.path, {"published": None, "rejected": None})
        ok = (
            expected["published"] == published[file.path]
            and expected["rejected"] == rejected[file.path]
            and published[file.path] + rejected[file.path] == file.rows
            and malformed[file.path] == 0
        )
        files.append(
            {
                "path": file.path,
                "rows": file.rows,
                "published": expected["published"],
                "rejected": expected["rejected"],
                "found_published": published[file.path],
                "found_rejected": rejected[file.path],
                "malformed": malformed[file.path],
                "ok": ok,
            }
        )
    return {
        "job_id": job_id,
        "ok": report is not None and duplicates == 0 and all(f["ok"] for f in files),
        "report_status": None if report is None else report["status"],
        "duplicates": duplicates,
        "files": files,
        # Where committed reading stopped short: a transaction still open there, or one Kafka left hanging.
        "stalled_partitions": [asdict(p) for p in stalled_partitions(settings)],
    }
