"""The Kafka side: topics, transactional chunk producers, commit markers."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from .config import KAFKA_OPTION_PREFIX, Settings
from .errors import KafkaUnavailable, PublishError, SettingsError
from .records import Kind

log = logging.getLogger(__name__)
# One record per committed chunk, written inside the chunk's own transaction, so "this chunk
# is in Kafka" and "its marker is in Kafka" are the same fact.
COMMITS_TOPIC = "k2jobs.commits"
COMMITS_PARTITION = 0
# Tunable through K2_KAFKA_OPT_* (e.g. K2_KAFKA_OPT_COMPRESSION_TYPE=zstd); exactness does not depend on them.
PRODUCER_DEFAULTS: dict[str, object] = {
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 32_768,  # bounded: a full queue makes produce() wait, memory stays flat
    "message.timeout.ms": 45_000,  # below transaction.timeout.ms, as librdkafka requires
    "transaction.timeout.ms": 60_000,
    "partitioner": "murmur2_random",  # the Java client's partitioner: same key, same partition
    # Connect to every broker as soon as metadata names it. With sparse connections, init_transactions
    # often finds no connected broker right after bootstrap and waits for librdkafka's 500 ms
    # coordinator-query timer (measured here: 5 of 30 to 9 of 20 fresh producers waited 0.5 s; with this setting,
    # none of 100, median 3 ms).
    "enable.sparse.connections": False,
}
Headers = list[tuple[str, str | bytes | None]]


class ChunkFenced(PublishError):
    """Another attempt at the same chunk took over its transactional id."""


def admin_client(settings: Settings) -> AdminClient:
    """An AdminClient for the configured cluster; connection failures surface as errors, not log noise."""
    return AdminClient(settings.kafka_config(log_level=0))


def topic_replication(settings: Settings, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for the topics k2jobs creates: K2_REPLICATION_FACTOR or
    the smaller of 3 and the brokers the cluster reports; min.insync.replicas 2 from a factor of 3 on."""
    factor = settings.replication_factor or min(3, max(1, brokers))
    return factor, 2 if factor >= 3 else 1


def wanted_topics(settings: Settings, brokers: int) -> list[NewTopic]:
    """The data, dead-letter and commit-marker topics, with the partitions and replication k2jobs wants."""
    factor, min_isr = topic_replication(settings, brokers)
    config = {"min.insync.replicas": str(min_isr)}
    wanted = [NewTopic(kind.topic, settings.partitions, factor, config=config) for kind in Kind]
    wanted += [NewTopic(kind.dlq_topic, settings.partitions, factor, config=config) for kind in Kind]
    wanted.append(NewTopic(COMMITS_TOPIC, 1, factor, config={**config, "cleanup.policy": "compact"}))
    return wanted


def ensure_topics(settings: Settings, timeout_s: float = 5.0) -> list[str]:
    """Create the topics k2jobs writes when missing; warn about (and return) those that exist with other settings."""
    admin = admin_client(settings)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailable(f"Kafka at {settings.kafka_bootstrap} did not answer: {exc.args[0]}") from exc
    wanted = wanted_topics(settings, len(metadata.brokers))
    differences = topic_differences(settings, admin, metadata, [t for t in wanted if t.topic in metadata.topics])
    for difference in differences:
        log.warning("%s", difference)
    missing = [t for t in wanted if t.topic not in metadata.topics]
    if not missing:
        return differences
    for topic, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaUnavailable(f"cannot create topic {topic}: {exc.args[0]}") from exc
    return differences


def topic_differences(settings: Settings, admin: AdminClient, metadata: Any, existing: list[NewTopic]) -> list[str]:
    """How each existing topic differs from what k2jobs would create: partitions, replicas, min.insync.replicas.

    Without K2_REPLICATION_FACTOR, more replicas than wanted is no difference (the default follows the
    brokers that answer, fewer while one is down).
    """
    if not existing:
        return []
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t.topic) for t in existing]
    try:
        configs = {r.name: f.result() for r, f in admin.describe_configs(resources, request_timeout=10).items()}
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot read topic settings: {exc.args[0]}") from exc
    found = []
    for topic in existing:
        partitions = metadata.topics[topic.topic].partitions
        replicas = max(len(p.replicas) for p in partitions.values())
        factor = topic.replication_factor
        if settings.replication_factor is None and replicas > factor:
            factor = replicas
        min_isr = str(topic_replication(settings, factor)[1])
        entry = configs[topic.topic].get("min.insync.replicas")
        compared = [
            ("partitions", len(partitions), topic.num_partitions),
            ("replication factor", replicas, factor),
            ("min.insync.replicas", entry.value if entry is not None else None, min_isr),
        ]
        differ = [f"{what} {has} (k2jobs would create {wants})" for what, has, wants in compared if has != wants]
        if differ:
            found.append(f"topic {topic.topic} exists with other settings: " + ", ".join(differ))
    return found


def transactional_id(job_id: str, chunk_index: int) -> str:
    """Stable per chunk, so a re-run fences any earlier attempt of the same chunk."""
    return f"k2jobs-{job_id}-{chunk_index}"


def marker_key(job_id: str, chunk_index: int) -> bytes:
    return f"{job_id}:{chunk_index}".encode()


# Markers carry their producer's clock; ten minutes' margin covers hosts whose clocks differ.
CLOCK_MARGIN_MS = 600_000


def job_started_ms(job_id: str) -> int:
    """When a job began, from its id (20261127-031502-9f3a1c, UTC), less a margin; 0 if the id has no time."""
    try:
        started = datetime.strptime(job_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return 0
    return max(0, int(started.timestamp() * 1000) - CLOCK_MARGIN_MS)


def _wrap(exc: KafkaException, what: str) -> PublishError:
    err = exc.args[0]
    if err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH):
        return ChunkFenced(f"{what}: fenced by a newer attempt ({err.str()})")
    return PublishError(f"{what}: {err.str()}")


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


def marker_consumer_config(settings: Settings) -> dict[str, object]:
    """librdkafka configuration of the consumer that reads commit markers back."""
    return settings.kafka_consumer_config(
        **{
            "group.id": "k2jobs-marker-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )


class ChunkTransaction:
    """A transactional producer for one chunk: everything it sends commits or aborts together."""

    def __init__(self, settings: Settings, job_id: str, chunk_index: int) -> None:
        self.errors = DeliveryErrors()
        self._timeout_s = settings.kafka_call_timeout_s
        conf = producer_config(settings, transactional_id(job_id, chunk_index))
        self._producer = Producer({**conf, "on_delivery": self.errors})
        try:
            self._producer.init_transactions(self._timeout_s)
        except KafkaException as exc:
            raise _wrap(exc, "init_transactions") from exc

    def begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise _wrap(exc, "begin_transaction") from exc

    def send(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        """Queue one message, waiting for room when the local queue is full."""
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise _wrap(exc, "produce") from exc

    def send_batch(self, topic: str, key: bytes, values: Sequence[bytes], headers: Sequence[Headers]) -> None:
        """Queue many messages, then serve delivery reports; the hot loop of a chunk."""
        produce = self._producer.produce
        try:
            for value, message_headers in zip(values, headers, strict=True):
                try:
                    produce(topic, value, key, headers=message_headers)
                except BufferError:
                    self.send(topic, key, value, message_headers)
        except KafkaException as exc:
            raise _wrap(exc, "produce") from exc
        self._producer.poll(0)

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
            self._producer.abort_transaction(self._timeout_s)


class MarkerReader:
    """Reads committed chunk markers back (read_committed) to tell whether a chunk landed."""

    def __init__(self, settings: Settings) -> None:
        self._config = marker_consumer_config(settings)
        self._consumer = Consumer(self._config)
        self._tp = TopicPartition(COMMITS_TOPIC, COMMITS_PARTITION)

    def end_offset(self, timeout_s: float = 10.0) -> int:
        """The marker partition's current end; markers of chunks begun later lie past it."""
        try:
            return int(self._consumer.get_watermark_offsets(self._tp, timeout=timeout_s)[1])
        except KafkaException as exc:
            self._renew()
            raise PublishError(f"cannot read {COMMITS_TOPIC} offsets: {exc.args[0]}") from exc

    def _renew(self) -> None:
        """A new consumer, which asks the cluster where the marker partition's leader is now.

        With nothing assigned, the old one kept a dead leader until its next metadata refresh (5 minutes by
        default): every chunk's marker check failed that long after the leader was killed (tests/test_cluster.py).
        """
        with contextlib.suppress(KafkaException, RuntimeError):
            self._consumer.close()
        self._consumer = Consumer(self._config)

    def first_offset_since(self, since_ms: int, timeout_s: float = 10.0) -> int:
        """The first marker offset written at or after `since_ms`, or the partition's end if none was."""
        try:
            [found] = self._consumer.offsets_for_times(
                [TopicPartition(COMMITS_TOPIC, COMMITS_PARTITION, since_ms)], timeout_s
            )
        except KafkaException as exc:
            self._renew()
            raise PublishError(f"cannot look up {COMMITS_TOPIC} offsets by time: {exc.args[0]}") from exc
        return self.end_offset() if found.offset < 0 else int(found.offset)

    def find(self, key: bytes, since_ms: int, timeout_s: float = 60.0) -> dict | None:  # type: ignore[type-arg]
        """The committed marker with `key` written since `since_ms`, or None if there is none."""
        start = self.first_offset_since(since_ms)
        target = self.end_offset()
        if target <= start:
            return None
        self._consumer.assign([TopicPartition(COMMITS_TOPIC, COMMITS_PARTITION, start)])
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                msg = self._consumer.poll(0.5)
                if msg is not None and msg.error() is None and msg.key() == key:
                    return orjson.loads(msg.value() or b"null")  # type: ignore[no-any-return]
                position = self._consumer.position([self._tp])[0].offset
                if position >= target:
                    return None
        finally:
            self._consumer.unassign()
        self._renew()
        raise PublishError(f"timed out reading {COMMITS_TOPIC} up to offset {target}")

    def close(self) -> None:
        self._consumer.close()


def warm_up_kafka(settings: Settings, markers: MarkerReader) -> None:
    """Open a worker's connections and load the coordinators a chunk needs, before its first chunk.

    A transactional producer with this process's own id finds and loads its transaction coordinator (on a
    fresh broker, that creates Kafka's transaction log); the marker reader fetches metadata.
    """
    markers.end_offset()
    conf = {**PRODUCER_DEFAULTS, **settings.kafka_config()}
    conf["transactional.id"] = f"k2jobs-warm-up-{socket.gethostname()}-{os.getpid()}"
    producer = Producer(conf)
    try:
        producer.init_transactions(settings.kafka_call_timeout_s)
    except KafkaException as exc:
        raise PublishError(f"warming up the Kafka producer: {exc.args[0]}") from exc


def check_kafka(settings: Settings, timeout_s: float = 5.0) -> None:
    """Raise KafkaUnavailable unless the cluster answers within `timeout_s`."""
    try:
        admin_client(settings).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailable(f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout_s:.0f}s") from exc


def check_client_settings(settings: Settings) -> None:
    """Build the producer and consumer configurations once; raise SettingsError naming what librdkafka refuses.

    librdkafka checks properties and their combinations (transaction.timeout.ms >= message.timeout.ms, ...)
    only when a client is created: without this, every chunk would fail at its producer's creation.
    The clients get no bootstrap servers, so they connect to nothing and are gone before this returns.
    """
    offline = {"bootstrap.servers": ""}
    for build in (
        lambda: Producer({**producer_config(settings, "k2jobs-settings-check"), **offline}),
        lambda: Consumer({**marker_consumer_config(settings), **offline}),
    ):
        try:
            client = build()
        except (KafkaException, ValueError, TypeError) as exc:
            raise SettingsError(_refused_setting(settings, exc)) from exc
        if isinstance(client, Consumer):
            client.close()
        del client


def _refused_setting(settings: Settings, exc: Exception) -> str:
    """Which K2_KAFKA_OPT_* (or k2jobs default) librdkafka's message is about, and what it says."""
    reason = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
    named = [name for name in settings.kafka_options if name in reason] or list(settings.kafka_options)
    shown = [f"{KAFKA_OPTION_PREFIX}{name.upper().replace('.', '_')}={_shown(name, settings)}" for name in named]
    ours = [f"{k}={v}" for k, v in PRODUCER_DEFAULTS.items() if k in reason and k not in settings.kafka_options]
    what = ", ".join(shown) if shown else f"K2_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}"
    note = f" (k2jobs' producer sets {', '.join(ours)} unless a K2_KAFKA_OPT_* overrides it)" if ours else ""
    return f"invalid Kafka setting {what}: librdkafka refuses it: {reason}{note}"


def _shown(name: str, settings: Settings) -> str:
    secret = any(word in name for word in ("password", "secret", "token"))
    return "***" if secret else settings.kafka_options[name]
