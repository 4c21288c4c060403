"""Before a load: is Kafka reachable, and are the K2_KAFKA_OPT_* settings ones librdkafka accepts."""

from __future__ import annotations

import os
import socket
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from k2jobs.config import CLIENT_DEFAULTS, KAFKA_OPTION_PREFIX, Settings
from k2jobs.errors import KafkaUnavailable, PublishError, SettingsError
from k2jobs.kafka.producer import PRODUCER_DEFAULTS, producer_config
from k2jobs.kafka.refusals import AUTH_HINT
from k2jobs.kafka.topics import kafka_unavailable, watched_admin


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
