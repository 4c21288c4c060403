"""The local stack's Kafka layout and the replication k2jobs asks for; pure, no services."""

from __future__ import annotations

from pathlib import Path

import pytest

from k2jobs.config import Settings, load_settings
from k2jobs.errors import InputError
from k2jobs.kafka.topics import topic_replication, wanted_topics
from k2jobs.stack.kafka_nodes import internal_replication, kafka_nodes


def test_cluster_ports_follow_from_the_bootstrap_port(tmp_path: Path) -> None:
    nodes = kafka_nodes(tmp_path, "127.0.0.1", 19092, 3)
    assert [(n.node_id, n.port, n.controller_port) for n in nodes] == [
        (1, 19092, 19093),
        (2, 19094, 19095),
        (3, 19096, 19097),
    ]
    assert [n.bootstrap for n in nodes] == ["127.0.0.1:19092", "127.0.0.1:19094", "127.0.0.1:19096"]
    assert len({n.home for n in nodes}) == 3, "each broker has its own log dir"


def test_a_single_node_keeps_its_folder_and_may_move_its_controller(tmp_path: Path) -> None:
    (node,) = kafka_nodes(tmp_path, "127.0.0.1", 9092, 1, controller_port=9999)
    assert (node.name, node.home, node.port, node.controller_port) == ("kafka", tmp_path / "kafka", 9092, 9999)


@pytest.mark.parametrize(("brokers", "expected"), [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))])
def test_replication_follows_the_brokers(brokers: int, expected: tuple[int, int]) -> None:
    assert internal_replication(brokers) == expected
    assert topic_replication(Settings(), brokers) == expected


def test_replication_factor_setting_wins_over_the_broker_count() -> None:
    settings = load_settings({"K2_REPLICATION_FACTOR": "2"})
    assert topic_replication(settings, 3) == (2, 1)
    topics = wanted_topics(load_settings({"K2_REPLICATION_FACTOR": "3"}), 1)
    assert {(t.replication_factor, t.config["min.insync.replicas"]) for t in topics} == {(3, "2")}
    assert {t.topic for t in topics} >= {"market.trades.raw", "market.quotes.dlq", "k2jobs.commits"}
    with pytest.raises(InputError, match="K2_REPLICATION_FACTOR"):
        load_settings({"K2_REPLICATION_FACTOR": "0"})
