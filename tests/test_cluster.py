"""Three Kafka brokers (`stack up --brokers 3`, its own stack started once for this module): brokers killed -9 at
random moments, commit moments included, a rolling restart, a worker on "another host" reading a copy of the data.
Every job ends succeeded, every row exactly once (read_committed), and `verify` agrees with no stalled partition.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster import (
    DATA_TOPIC,
    FILE_ROWS,
    KEY,
    TRANSACTION_STATE,
    broker_pids,
    cluster_env,
    committing_chunk,
    count_exactness,
    data_leader,
    fully_replicated,
    gone,
    murmur2,
    read_job,
    run_k2,
    settings_of,
    transaction_coordinator,
    wait_until,
    write_tiled_input,
)
from .conftest import SLOT
from .reference import key_order_violations

ENV = cluster_env(SLOT)
DATA = Path(ENV["K2_DATA_ROOT"])
BIG_TILES = 6  # 549,786 rows
# 3,665,240 rows: long enough for three or more kills in one job, each broker restarted before the next kill
# (a restart takes about 25 s on this 2-core machine; the job about a minute without kills).
FAULT_TILES = 40
CHUNK_ROWS = "20000"  # many chunks, many commits for a kill to land on


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """Redis, three Kafka brokers, two workers and Flower, on ports of this test slot."""
    DATA.mkdir(parents=True, exist_ok=True)
    write_tiled_input(DATA / "big", BIG_TILES)
    write_tiled_input(DATA / "faults", FAULT_TILES)
    write_tiled_input(DATA / "small", 1, lines=1000)
    up = run_k2(ENV, "stack", "up", "--brokers", "3", "--workers", "2", "--json", timeout=600)
    assert up.returncode == 0, up.stderr
    yield json.loads(up.stdout)
    if not os.environ.get("K2_TEST_KEEP_STACK"):
        run_k2(ENV, "stack", "down", timeout=300)


@pytest.fixture(scope="module")
def cluster_settings(cluster) -> Any:  # type: ignore[no-untyped-def]
    return settings_of(ENV)


@pytest.fixture(scope="module")
def cluster_ledger(cluster_settings) -> Any:  # type: ignore[no-untyped-def]
    from k2jobs.store.ledger import Ledger, connect

    return Ledger(connect(cluster_settings.redis_url))


def start_job(folder: str = "big", *extra: str) -> str:
    """Each 20,000-row chunk a task (and transaction) of its own: many commits for a kill to land on, and
    `transactional_id(job, chunk)` names a running task's producer. (The soak kills under default tasks.)"""
    env = {**ENV, "K2_TASK_ROWS": CHUNK_ROWS}
    done = run_k2(env, "submit", folder, "--no-wait", "--json", "--again", "--chunk-rows", CHUNK_ROWS, *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["job_id"]  # type: ignore[no-any-return]


def finished(ledger: Any, job_id: str) -> bool:
    return ledger.report(job_id) is not None


def restart_dead_brokers() -> None:
    up = run_k2(ENV, "stack", "up", "--workers", "2", timeout=600)  # the broker count is remembered
    assert up.returncode == 0, up.stderr


def assert_exact(settings: Any, ledger: Any, job_id: str, rows: int) -> list[Any]:
    """The job succeeded, every row is in Kafka once (read_committed), and `verify` agrees: no stalled partition."""
    done = run_k2(ENV, "status", job_id, "--wait", "--json", timeout=900)
    report = json.loads(done.stdout)
    assert done.returncode == 0, (report["status"], report["totals"], report.get("failures", [])[:3])
    assert report["totals"] == {"rows": rows, "published": rows, "rejected": 0}
    messages = read_job(settings, ledger, job_id)
    assert count_exactness(messages, rows) == (0, 0)
    # Every row of the file went to the partition Kafka's partitioner picks for its key (checks data_leader's maths).
    assert {(m.topic, m.partition) for m in messages} == {(DATA_TOPIC, murmur2(KEY) % settings.partitions)}
    assert key_order_violations(messages) == []
    verify = run_k2(ENV, "verify", job_id, "--json", timeout=600)
    result = json.loads(verify.stdout)
    assert verify.returncode == 0, result
    assert result["stalled_partitions"] == [], result["stalled_partitions"]
    return messages


def test_data_leader_killed_mid_job_only_it_restarts_and_every_topic_is_replicated(
    cluster, cluster_settings, cluster_ledger
) -> None:  # type: ignore[no-untyped-def]
    """The short three-broker fault test (in `make test`): kill -9 the data partition's leader at a random moment."""
    from confluent_kafka.admin import ConfigResource

    from k2jobs.kafka.topics import admin_client

    assert [b["bootstrap"] for b in cluster["brokers"]] == ENV["K2_KAFKA_BOOTSTRAP"].split(",")
    # `stack up` created k2jobs' topics, replicated (not the first job, on its path to the first chunk)
    made = admin_client(cluster_settings).list_topics(timeout=10).topics
    for topic in (DATA_TOPIC, "market.trades.dlq", "market.quotes.raw", "market.quotes.dlq", "k2jobs.commits"):
        assert {len(p.replicas) for p in made[topic].partitions.values()} == {3}, topic
    job_id = start_job()  # its transactions create the transaction log
    time.sleep(random.uniform(0.5, 2.5))
    before = broker_pids(ENV)
    leader = data_leader(cluster_settings)
    os.killpg(before[leader], signal.SIGKILL)
    wait_until(lambda: gone(before[leader]), what=f"broker {leader} to die")
    restart_dead_brokers()
    after = broker_pids(ENV)
    assert {b: after[b] for b in after if b != leader} == {b: before[b] for b in before if b != leader}
    assert after[leader] not in (None, before[leader])
    assert_exact(cluster_settings, cluster_ledger, job_id, BIG_TILES * FILE_ROWS)

    admin = admin_client(cluster_settings)
    metadata = admin.list_topics(timeout=10)
    topics = [TRANSACTION_STATE, "__consumer_offsets", DATA_TOPIC, "market.trades.dlq", "k2jobs.commits"]
    for topic in topics:
        assert {len(p.replicas) for p in metadata.topics[topic].partitions.values()} == {3}, topic
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
    wait_until(lambda: min_insync_replicas(admin, resources) is not None, what="the new topics on every broker")
    assert min_insync_replicas(admin, resources) == dict.fromkeys(topics, "2")


def min_insync_replicas(admin: Any, resources: list[Any]) -> dict[str, str] | None:
    from confluent_kafka import KafkaException

    try:
        found = {r.name: f.result()["min.insync.replicas"].value for r, f in admin.describe_configs(resources).items()}
    except KafkaException:
        return None  # a topic just created, not yet known to the broker asked
    return found


def test_submit_names_an_existing_topic_with_other_settings(cluster) -> None:  # type: ignore[no-untyped-def]
    done = run_k2(ENV, "submit", "small", "--json", "--again")
    assert done.returncode == 0 and "market.trades.raw" not in done.stderr  # as created: nothing to say
    done = run_k2({**ENV, "K2_REPLICATION_FACTOR": "1"}, "submit", "small", "--json", "--again")
    assert done.returncode == 0
    assert "topic market.trades.raw exists with other settings: replication factor 3" in done.stderr


@pytest.mark.cluster
def test_leader_and_coordinator_killed_at_random_moments_in_one_job(cluster, cluster_settings, cluster_ledger) -> None:  # type: ignore[no-untyped-def]
    """kill -9 the data partition's leader or a chunk's transaction coordinator, in turn: at random moments, and
    at the moment a chunk commits (all its rows sent, no result yet); each broker restarted with `stack up` before
    the next kill. No timing window is avoided."""
    from k2jobs.kafka.producer import transactional_id
    from k2jobs.kafka.topics import admin_client

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    job_id = start_job("faults")
    kills: list[tuple[str, int]] = []
    targets = ["leader at commit", "coordinator", "coordinator at commit", "leader"] * 2
    while targets and not finished(cluster_ledger, job_id):
        time.sleep(rng.uniform(0.0, 2.0))
        target = targets.pop(0)
        pids = broker_pids(ENV)
        metadata = admin_client(cluster_settings).list_topics(timeout=10)
        if target.endswith("at commit"):
            chunk = committing_chunk(cluster_ledger, job_id)
            if chunk is None:
                continue
        else:
            chunk = running_chunk(cluster_ledger, job_id, rng)
        if target.startswith("leader"):
            broker = data_leader(cluster_settings, metadata=metadata)
        else:
            broker = transaction_coordinator(cluster_settings, transactional_id(job_id, chunk), metadata)
        if finished(cluster_ledger, job_id):
            break
        os.killpg(pids[broker], signal.SIGKILL)  # type: ignore[arg-type]
        kills.append((target, broker))
        wait_until(lambda pid=pids[broker]: gone(pid), what=f"broker {broker} to die")  # type: ignore[misc]
        time.sleep(rng.uniform(0.0, 1.0))
        restart_dead_brokers()
    print(f"seed {seed}: killed {kills}")
    assert len(kills) >= 3, f"the job ended after only {len(kills)} kills (seed {seed})"
    assert any(target.endswith("at commit") for target, _ in kills), f"no kill at a commit (seed {seed})"
    assert_exact(cluster_settings, cluster_ledger, job_id, FAULT_TILES * FILE_ROWS)


def running_chunk(ledger: Any, job_id: str, rng: random.Random) -> int:
    """A chunk being loaded now (or, between chunks, one still to come)."""
    done = ledger.results(job_id)
    progress = {int(i) for i in ledger.redis.hkeys(f"k2:job:{job_id}:progress")}
    chunks = range(int(ledger.job_meta(job_id)["chunks"]))
    running = sorted(progress - set(done)) or [c for c in chunks if c not in done] or [0]
    return rng.choice(running)


@pytest.mark.cluster
def test_rolling_restart_during_a_job(cluster, cluster_settings, cluster_ledger) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM each broker in turn (controlled shutdown), restart it, wait until every replica is in sync.

    Every broker is stopped while a job runs: when a job ends before the restart is through, the next broker's
    stop happens during a new job. Every job ends exact.
    """
    rng = random.Random()
    jobs = [start_job()]
    for broker in (1, 2, 3):
        if finished(cluster_ledger, jobs[-1]):
            jobs.append(start_job())
        time.sleep(rng.uniform(0.0, 2.0))
        pid = broker_pids(ENV)[broker]
        assert pid is not None
        assert not finished(cluster_ledger, jobs[-1]), "stopped while a job runs"
        os.killpg(pid, signal.SIGTERM)
        wait_until(lambda pid=pid: gone(pid), timeout_s=120, what=f"broker {broker} to shut down")  # type: ignore[misc]
        restart_dead_brokers()
        wait_until(lambda: fully_replicated(cluster_settings), timeout_s=180, what="every replica back in sync")
    print(f"rolling restart over {len(jobs)} job(s)")
    for job_id in jobs:
        assert_exact(cluster_settings, cluster_ledger, job_id, BIG_TILES * FILE_ROWS)


def test_a_worker_on_another_host_loads_chunks_from_its_copy_of_the_data(
    cluster, cluster_settings, cluster_ledger, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """`python -m k2jobs worker` with its own K2_DATA_ROOT: a copy at another path, other modification times."""
    elsewhere = tmp_path / "mnt" / "copy"
    shutil.copytree(DATA / "big", elsewhere / "big")
    for path in elsewhere.rglob("*"):
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    log = tmp_path / "worker.log"
    env = {**os.environ, **ENV, "K2_DATA_ROOT": str(elsewhere)}
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "k2jobs", "worker", "--concurrency", "2", "--name", "k2jobs-elsewhere@%h"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        wait_until(lambda: b"k2jobs-elsewhere@" in log.read_bytes() and b"ready." in log.read_bytes(), 120, "ready")
        job_id = start_job()
        assert_exact(cluster_settings, cluster_ledger, job_id, BIG_TILES * FILE_ROWS)
    finally:
        worker.terminate()
        worker.wait(120)
    taken = [line for line in log.read_text().splitlines() if f"chunk done job_id={job_id}" in line]
    assert taken, log.read_text()[-3000:]
    assert all("status=committed" in line for line in taken)
    assert worker.returncode == 0, "a warm shutdown on SIGTERM"


def test_worker_refuses_to_start_without_its_data_root_or_services(tmp_path: Path) -> None:
    def worker(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "k2jobs", "worker"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **ENV, **env},
            cwd=tmp_path,
        )

    missing = worker(K2_DATA_ROOT=str(tmp_path / "not-mounted"))
    assert missing.returncode == 2 and "not-mounted" in missing.stderr
    no_redis = worker(K2_DATA_ROOT=str(tmp_path), K2_REDIS_URL="redis://127.0.0.1:1/0")
    assert no_redis.returncode == 3 and "Redis" in no_redis.stderr
