"""`stack up`'s broker warm-up (k2jobs/broker_warm_up.py) against the real test broker: k2jobs-like traffic in
committed transactions to a private topic, which is gone afterwards, and nothing sent anywhere else."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from k2jobs.config import load_settings
from k2jobs.errors import SettingsError
from k2jobs.kafka.topics import admin_client
from k2jobs.plan.model import Kind
from k2jobs.stack.warm_up import WARM_UP_TOPIC, warm_broker, warm_up_values


def test_warm_up_values_are_trade_values_in_both_formats() -> None:
    values = warm_up_values()
    assert len(values["json"]) == len(values["avro"]) == 2_000
    assert values["json"][0].startswith(b'{"symbol":"WARM"') and values["avro"][0][:1] == b"\x00"
    assert len(set(values["avro"])) == 2_000  # each row its own id, as real rows have


@pytest.mark.parametrize(("raw", "seconds"), [("", 10.0), ("0", 0.0), ("2.5", 2.5)])
def test_warm_up_seconds_setting(raw: str, seconds: float) -> None:
    assert load_settings({"K2_BROKER_WARM_UP_S": raw}).broker_warm_up_s == seconds


@pytest.mark.parametrize("raw", ["-1", "soon", "nan"])
def test_warm_up_seconds_setting_refuses_nonsense(raw: str) -> None:
    with pytest.raises(SettingsError, match="K2_BROKER_WARM_UP_S"):
        load_settings({"K2_BROKER_WARM_UP_S": raw})


def high_watermarks(settings, topics: list[str]) -> dict[tuple[str, int], int]:  # type: ignore[no-untyped-def]
    consumer = Consumer(settings.kafka_consumer_config(**{"group.id": "k2jobs-test-warm-up"}))
    try:
        found = {}
        for topic in topics:
            for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                found[(topic, partition)] = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)[1]
        return found
    finally:
        consumer.close()


def test_warm_up_commits_traffic_to_its_own_topic_and_deletes_it(stack, settings) -> None:  # type: ignore[no-untyped-def]
    data_topics = [kind.topic for kind in Kind]
    before = high_watermarks(settings, data_topics)
    sent = warm_broker(settings, 0.5)
    assert sent["transactions"] >= 1 and sent["messages"] == 100_000 * sent["transactions"]
    admin, deadline = admin_client(settings), time.monotonic() + 15  # a deleted topic leaves metadata shortly after
    while WARM_UP_TOPIC in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    assert WARM_UP_TOPIC not in admin.list_topics(timeout=10).topics
    assert high_watermarks(settings, data_topics) == before  # no message anywhere else


def test_warm_up_goes_on_while_the_rest_of_the_stack_starts(stack, settings) -> None:  # type: ignore[no-untyped-def]
    # `stack up` sets the event once workers, registry and Flower answer: until then the broker is warmed, whatever
    # `seconds` says; once it is set, the warm-up ends with its transaction.
    rest_ready = threading.Event()
    timer = threading.Timer(3.0, rest_ready.set)
    timer.start()
    try:
        sent = warm_broker(settings, 0.5, rest_ready)
    finally:
        timer.cancel()
    assert 2.5 <= sent["seconds"] < 3.0 + 5.0, sent  # its clock starts once the topic exists (< 0.5 s after)
    ready = threading.Event()
    ready.set()
    sent = warm_broker(settings, 0.5, ready)  # the rest was ready first: `seconds` (and whole transactions) only
    assert sent["seconds"] < 3.0 and sent["transactions"] >= 1, sent
