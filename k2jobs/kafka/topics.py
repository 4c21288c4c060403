"""Topics: creating the job topics and the commits topic, and refusing ones whose settings differ."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from k2jobs.config import Settings
from k2jobs.errors import KafkaUnavailable, TopicRefused
from k2jobs.kafka.markers import COMMITS_TOPIC
from k2jobs.kafka.refusals import KafkaWatch, watched_config
from k2jobs.plan.model import Kind

log = logging.getLogger(__name__)


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
