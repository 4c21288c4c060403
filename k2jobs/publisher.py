"""The Kafka side: topics, transactional chunk producers, commit markers."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from .access import AUTH_HINT, KafkaWatch, watched_config
from .config import CLIENT_DEFAULTS, KAFKA_OPTION_PREFIX, TRANSACTION_TIMEOUT_MS, Settings
from .errors import KafkaUnavailable, PublishError, SettingsError, TopicRefused
from .markers import COMMITS_TOPIC
from .records import Kind

try:
    from . import _fastrows
except ImportError:  # installed without a C compiler: every message goes through confluent-kafka's produce()
    _fastrows = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
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
Headers = list[tuple[str, str | bytes | None]]


class ChunkFenced(PublishError):
    """Another attempt at the same chunk took over its transactional id."""


def admin_client(settings: Settings) -> AdminClient:
    """An AdminClient for the configured cluster; connection failures surface as errors, not log noise."""
    return AdminClient(settings.kafka_config(log_level=0))


def watched_admin(settings: Settings) -> tuple[AdminClient, KafkaWatch]:
    """An AdminClient whose error callback and log say why brokers refused it (access.KafkaWatch)."""
    conf, watch = watched_config(settings.kafka_config())
    return AdminClient(conf), watch


def kafka_unavailable(settings: Settings, admin: AdminClient, watch: KafkaWatch, what: str) -> KafkaUnavailable:
    """KafkaUnavailable naming authentication or TLS when the brokers' answers show it was that."""
    admin.poll(0)  # serves the error callback and the log
    reason = watch.refusal()
    if reason:
        return KafkaUnavailable(f"Kafka at {settings.kafka_bootstrap} refused k2jobs: {reason}")
    return KafkaUnavailable(f"Kafka at {settings.kafka_bootstrap} {what}")


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
    admin, watch = watched_admin(settings)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise kafka_unavailable(settings, admin, watch, f"did not answer: {exc.args[0]}") from exc
    wanted = wanted_topics(settings, len(metadata.brokers))
    if COMMITS_TOPIC in metadata.topics:
        refuse_bad_commits_topic(admin, metadata, timeout_s)
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


def refuse_bad_commits_topic(admin: AdminClient, metadata: Any, timeout_s: float) -> None:
    """Raise TopicRefused unless the marker topic has one partition and is compacted (never deleted).

    Markers are how a chunk is known to be committed when Redis forgot it: a marker deleted by retention, or
    one the scan would not find on its partition, would let a committed chunk be published again.
    """
    partitions = len(metadata.topics[COMMITS_TOPIC].partitions)
    resource = ConfigResource(ConfigResource.Type.TOPIC, COMMITS_TOPIC)
    try:
        [config] = [f.result() for f in admin.describe_configs([resource], request_timeout=timeout_s).values()]
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot read the settings of topic {COMMITS_TOPIC}: {exc.args[0]}") from exc
    entry = config.get("cleanup.policy")
    policy = entry.value if entry is not None else "delete"
    if partitions != 1 or policy != "compact":
        raise TopicRefused(
            f"topic {COMMITS_TOPIC} exists with {partitions} partitions and cleanup.policy={policy}; k2jobs needs "
            "1 partition and cleanup.policy=compact (its commit markers must stay findable): delete or fix the topic"
        )


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


def _bind_compiled_send() -> bool:
    """Whether _fastrows.send can queue on confluent-kafka's producers: the C extension is built and the one
    librdkafka this process loaded (for confluent-kafka) is found in /proc/self/maps."""
    if _fastrows is None or os.environ.get("K2_COMPILED_SEND") == "0":  # 0: confluent-kafka's produce() only
        return False
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/librdkafka" in line}
    except OSError:  # not Linux
        return False
    return len(paths) == 1 and _fastrows.bind(paths.pop())


COMPILED_SEND = _bind_compiled_send()
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
        # The compiled send uses the Producer's librdkafka handle; its name proves the handle is the one
        # this Producer holds (a confluent-kafka whose object layout changed falls back to produce()).
        self._compiled = COMPILED_SEND and _fastrows.handle_name(self._producer).startswith(
            f"{conf.get('client.id', 'rdkafka')}#producer-"
        )
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


def warm_up_kafka(settings: Settings) -> None:
    """Open a worker's connections and load the coordinators a chunk needs, before its first chunk.

    A transactional producer with this process's own id finds and loads its transaction coordinator (on a
    fresh broker, that creates Kafka's transaction log).
    """
    conf = {**PRODUCER_DEFAULTS, **settings.kafka_config()}
    conf["transactional.id"] = f"k2jobs-warm-up-{socket.gethostname()}-{os.getpid()}"
    producer = Producer(conf)
    try:
        producer.init_transactions(settings.kafka_call_timeout_s)
    except KafkaException as exc:
        raise PublishError(f"warming up the Kafka producer: {exc.args[0]}") from exc


def check_kafka(settings: Settings, timeout_s: float = 5.0) -> None:
    """Raise KafkaUnavailable unless the cluster answers within `timeout_s`; at once when it refuses k2jobs
    (authentication, TLS), which librdkafka would otherwise retry for ever."""
    check_client_settings(settings)  # a client librdkafka would not even create (a user without a password)
    admin, watch = watched_admin(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            admin.poll(0)  # serves the error callback and the log
            if watch.refusal() or time.monotonic() >= deadline:
                raise kafka_unavailable(settings, admin, watch, f"did not answer within {timeout_s:.0f}s") from exc


def check_client_settings(settings: Settings) -> None:
    """Build the producer and consumer configurations once; raise SettingsError naming what librdkafka refuses.

    librdkafka checks properties and their combinations (transaction.timeout.ms >= message.timeout.ms, ...)
    only when a client is created: without this, every chunk would fail at its producer's creation.
    The clients get no bootstrap servers, so they connect to nothing and are gone before this returns.
    """
    offline = {"bootstrap.servers": ""}
    for build in (
        lambda: Producer({**producer_config(settings, "k2jobs-settings-check"), **offline}),
        lambda: Consumer({**settings.kafka_consumer_config(**{"group.id": "k2jobs-settings-check"}), **offline}),
    ):
        try:
            client = build()
        except (KafkaException, ValueError, TypeError) as exc:
            if "sasl.password" in str(exc):  # a user without a password: what a wrong password also gets
                raise KafkaUnavailable(
                    f"Kafka authentication is not possible: {_refused_setting(settings, exc)} ({AUTH_HINT})"
                ) from exc
            raise SettingsError(_refused_setting(settings, exc)) from exc
        if isinstance(client, Consumer):
            client.close()
        del client


def _refused_setting(settings: Settings, exc: Exception) -> str:
    """Which K2_KAFKA_OPT_* (or k2jobs default) librdkafka's message is about, and what it says."""
    reason = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
    named = [name for name in settings.kafka_options if name in reason] or list(settings.kafka_options)
    shown = [f"{KAFKA_OPTION_PREFIX}{name.upper().replace('.', '_')}={_shown(name, settings)}" for name in named]
    defaults = {**CLIENT_DEFAULTS, **PRODUCER_DEFAULTS}
    ours = [f"{k}={v}" for k, v in defaults.items() if k in reason and k not in settings.kafka_options]
    what = ", ".join(shown) if shown else f"K2_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}"
    note = f" (k2jobs sets {', '.join(ours)} unless a K2_KAFKA_OPT_* overrides it)" if ours else ""
    return f"invalid Kafka setting {what}: librdkafka refuses it: {reason}{note}"


def _shown(name: str, settings: Settings) -> str:
    secret = any(word in name for word in ("password", "secret", "token"))
    return "***" if secret else settings.kafka_options[name]
