"""Bad settings are refused up front, naming the setting: by submit, resume, `stack up` and a worker's start."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from k2jobs.config import load_settings
from k2jobs.errors import InputError, SettingsError
from k2jobs.kafka.preflight import check_client_settings

from .conftest import DATA_ROOT, ask_workers, run_k2

CHUNK_QUEUE = "k2jobs.chunks"
BAD_SETTINGS = [
    # librdkafka refuses the combination: transaction.timeout.ms below k2jobs' message.timeout.ms (45 s).
    ({"K2_KAFKA_OPT_TRANSACTION_TIMEOUT_MS": "5000"}, "K2_KAFKA_OPT_TRANSACTION_TIMEOUT_MS=5000", "message.timeout.ms"),
    ({"K2_KAFKA_OPT_NO_SUCH_PROPERTY": "1"}, "K2_KAFKA_OPT_NO_SUCH_PROPERTY=1", "No such configuration property"),
    ({"K2_KAFKA_OPT_ISOLATION_LEVEL": "sometimes"}, "K2_KAFKA_OPT_ISOLATION_LEVEL=sometimes", "isolation.level"),
    # Above k2jobs' own reconnect.backoff.max.ms (1000, config.CLIENT_DEFAULTS): the message names that default.
    (
        {"K2_KAFKA_OPT_RECONNECT_BACKOFF_MS": "2000"},
        "K2_KAFKA_OPT_RECONNECT_BACKOFF_MS=2000",
        "k2jobs sets reconnect.backoff.max.ms=1000",
    ),
    ({"K2_BATCH_ROWS": "0"}, "K2_BATCH_ROWS='0' must be positive", ""),
    ({"K2_REDIS_URL": "http://127.0.0.1:6379"}, "K2_REDIS_URL='http://127.0.0.1:6379'", "redis://"),
    ({"K2_KAFKA_BOOTSTRAP": "kafka"}, "K2_KAFKA_BOOTSTRAP='kafka'", "host:port"),
    ({"K2_FLOWER_PORT": "70000"}, "K2_FLOWER_PORT=70000", "TCP port"),
]


@pytest.mark.parametrize(("env", "named", "why"), BAD_SETTINGS)
def test_settings_the_clients_refuse_raise_a_settings_error_naming_them(
    env: dict[str, str], named: str, why: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        check_client_settings(load_settings(env))
    assert isinstance(caught.value, InputError)  # exit 2: refused before anything was enqueued
    assert named in str(caught.value) and why in str(caught.value)


def test_secret_values_are_not_echoed() -> None:
    env = {"K2_KAFKA_OPT_SASL_PASSWORD": "hunter2", "K2_KAFKA_OPT_SECURITY_PROTOCOL": "carrier-pigeon"}
    with pytest.raises(SettingsError) as caught:
        check_client_settings(load_settings(env))
    assert "K2_KAFKA_OPT_SECURITY_PROTOCOL=carrier-pigeon" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_valid_settings_pass(settings) -> None:  # type: ignore[no-untyped-def]
    check_client_settings(settings)
    check_client_settings(load_settings({"K2_KAFKA_OPT_TRANSACTION_TIMEOUT_MS": "90000"}))


@pytest.mark.parametrize(("env", "named", "why"), BAD_SETTINGS)
def test_submit_refuses_a_bad_setting_and_enqueues_nothing(stack, ledger, env, named, why) -> None:  # type: ignore[no-untyped-def]
    before = ledger.recent_jobs(10_000)
    queued = ledger.redis.llen(CHUNK_QUEUE)
    done = run_k2("submit", "sample", "--json", env=env)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr and why in done.stderr
    assert done.stdout == ""
    assert ledger.recent_jobs(10_000) == before  # no job created
    assert ledger.redis.llen(CHUNK_QUEUE) == queued == 0  # no chunk enqueued


def test_resume_and_stack_up_refuse_a_bad_setting(stack) -> None:  # type: ignore[no-untyped-def]
    bad = {"K2_KAFKA_OPT_TRANSACTION_TIMEOUT_MS": "5000"}
    before = json.loads(run_k2("stack", "status", "--json", check=True).stdout)
    up = run_k2("stack", "up", "--workers", "3", env=bad)
    assert up.returncode == 2, up.stderr
    assert "K2_KAFKA_OPT_TRANSACTION_TIMEOUT_MS=5000" in up.stderr
    assert json.loads(run_k2("stack", "status", "--json", check=True).stdout) == before  # nothing started
    resumed = run_k2("resume", "no-such-job", env=bad)
    assert resumed.returncode == 2
    assert "K2_KAFKA_OPT_TRANSACTION_TIMEOUT_MS=5000" in resumed.stderr


def test_a_worker_with_a_bad_setting_refuses_to_start_with_the_reason_in_its_log(stack) -> None:  # type: ignore[no-untyped-def]
    from k2jobs.app import app

    name = "k2-bad-settings@%h"
    worker = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "k2jobs.app", "worker", "-Q", CHUNK_QUEUE, "-c", "1", "-n", name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DATA_ROOT,
        env={**os.environ, "K2_KAFKA_OPT_TRANSACTION_TIMEOUT_MS": "5000"},
    )
    assert worker.returncode != 0
    assert "this worker refuses to start" in worker.stderr
    assert "K2_KAFKA_OPT_TRANSACTION_TIMEOUT_MS=5000" in worker.stderr
    assert "message.timeout.ms" in worker.stderr
    assert not any(node.startswith("k2-bad-settings@") for node in ask_workers(app, "ping"))


def test_kafka_clients_stay_quiet_and_keep_trying_while_no_broker_answers() -> None:
    """k2jobs' producer and marker consumer, with no broker at their address: librdkafka's default re-bootstrap
    logged a failed connect every ~50 ms per client (463 lines in 20 s for the two); k2jobs' client defaults back
    off to one attempt a second, which librdkafka logs once and then counts as suppressed."""
    import logging
    import socket
    import time

    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    from k2jobs.kafka.markers import COMMITS_PARTITION, COMMITS_TOPIC, marker_consumer_config
    from k2jobs.kafka.producer import producer_config

    with socket.socket() as closed:  # bound and never listening: connections to it are refused, and it stays ours
        closed.bind(("127.0.0.1", 0))
        settings = load_settings({"K2_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed.getsockname()[1]}"})
        lines: list[str] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(record.getMessage())

        logger = logging.getLogger("k2jobs-test-no-broker")
        logger.addHandler(Collect())
        logger.propagate = False
        producer = Producer({**producer_config(settings, "k2jobs-test-no-broker"), "logger": logger})
        consumer = Consumer({**marker_consumer_config(settings, "read_committed"), "logger": logger})
        with pytest.raises(KafkaException):
            consumer.get_watermark_offsets(TopicPartition(COMMITS_TOPIC, COMMITS_PARTITION), 1, cached=False)
        lines.clear()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            producer.poll(0.05)
            consumer.poll(0.05)
        consumer.close()
        assert 0 < len(lines) <= 25, f"{len(lines)} log lines in 10 s with no broker: {lines[:3]}"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("K2_PROGRESS_EVERY_S", "fast", "is not a number of seconds"),
        ("K2_PROGRESS_EVERY_S", "0", "above 0"),
        ("K2_WATCH_EVERY_S", "-1", "above 0"),
        ("K2_TEST_PAUSE_BEFORE_COMMIT_S", "soon", "is not a number of seconds"),
        ("K2_COMPILED_SEND", "no", "must be 1 (on) or 0 (off)"),
        ("K2_TEST_NOTE_COMMITS", "yes", "must be 1 (on) or 0 (off)"),
        ("K2_KAFKA_CONTROLLER_PORT", "70000", "is not a TCP port"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable_and_what_it_accepts(name: str, value: str, says: str) -> None:
    from k2jobs.config import load_settings

    with pytest.raises(SettingsError) as caught:
        load_settings({name: value})
    assert name in str(caught.value) and says in str(caught.value)


def test_the_cli_exits_2_on_a_bad_float_setting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "k2jobs", "jobs"],
        capture_output=True,
        text=True,
        env={**os.environ, "K2_WATCH_EVERY_S": "often"},
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "K2_WATCH_EVERY_S='often' is not a number of seconds" in done.stderr


def test_the_stack_settings_come_from_settings() -> None:
    from pathlib import Path

    from k2jobs.config import load_settings

    env = {"K2_KAFKA_LIBS": "/opt/kafka", "K2_KAFKA_CONTROLLER_PORT": "29093", "K2_SECRETS_DIR": "s"}
    settings = load_settings(env)
    assert settings.kafka_libs == Path("/opt/kafka")
    assert settings.kafka_controller_port == 29093
    assert settings.secrets_dir == Path("s").absolute()
    assert load_settings({"K2_COMPILED_SEND": "0"}).compiled_send is False and load_settings({}).compiled_send
