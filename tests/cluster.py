"""Helpers for tests (and the soak) on a three-broker stack: its environment, where the leader and the
transaction coordinator are, reading a job back; no pytest here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .reference import key_order_violations

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
TRANSACTION_STATE = "__transaction_state"
DATA_TOPIC = "market.trades.raw"
KEY = b"ASX.BHP"  # every row of trades/7078.csv
FILE_ROWS = 91_631  # rows of data/sample/trades/7078.csv


def cluster_env(slot: int, name: str = "cluster", offset: int = 10) -> dict[str, str]:
    """A three-broker stack's environment inside a test slot's port ranges (`offset` ports above the
    single-node test stack's): brokers on port, port+2, port+4 (controllers on the odd ports after)."""
    shift = 100 * slot
    folder = REPO / (f".k2stack-test-{name}" if slot == 0 else f".k2stack-test-{slot}-{name}")
    kafka = 19092 + shift + offset
    return {
        "K2_REDIS_URL": f"redis://127.0.0.1:{16379 + shift + offset}/0",
        # One address would do to connect; all three let a new producer start while broker 1 is down.
        "K2_KAFKA_BOOTSTRAP": ",".join(f"127.0.0.1:{kafka + 2 * i}" for i in range(3)),
        "K2_STACK_DIR": str(folder),
        "K2_FLOWER_PORT": str(15555 + shift + offset),
        "K2_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{18081 + shift + offset}/apis/ccompat/v7",
        "K2_DATA_ROOT": str(folder / "data-root"),
        "K2_VISIBILITY_TIMEOUT": "20",
    }


def run_k2(
    env: dict[str, str], *args: str, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """`python -m k2jobs ...` against the stack `env` names, from its data root."""
    return subprocess.run(
        [sys.executable, "-m", "k2jobs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env={**os.environ, **env},
        cwd=env["K2_DATA_ROOT"],
    )


def settings_of(env: dict[str, str]) -> Any:
    from k2jobs.config import load_settings

    return load_settings({**os.environ, **env})


def write_tiled_input(root: Path, tiles: int, lines: int | None = None) -> Path:
    """trades/7078.csv repeated `tiles` times (91,631 rows each; or its first `lines`), one key, one partition."""
    (root / "trades").mkdir(parents=True, exist_ok=True)
    (root / "reference-data").mkdir(exist_ok=True)
    (root / "reference-data" / "company_info.csv").write_bytes(
        (SAMPLE / "reference-data" / "company_info.csv").read_bytes()
    )
    data = (SAMPLE / "trades" / "7078.csv").read_bytes() * tiles
    if lines is not None:
        data = b"".join(data.splitlines(keepends=True)[:lines])
    target = root / "trades" / "7078.csv"
    if not target.exists() or target.stat().st_size != len(data):
        target.write_bytes(data)
    return root


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as a non-negative int."""
    m, h = 0x5BD1E995, (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    whole = len(data) & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = data[whole:]
    if len(rest) == 3:
        h ^= rest[2] << 16
    if len(rest) >= 2:
        h ^= rest[1] << 8
    if rest:
        h = ((h ^ rest[0]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h & 0x7FFFFFFF


def java_hash(text: str) -> int:
    """Java's String.hashCode, as a signed 32-bit int."""
    h = 0
    for char in text:
        h = (31 * h + ord(char)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def data_leader(settings: Any, key: bytes = KEY, topic: str = DATA_TOPIC, metadata: Any = None) -> int:
    """The broker leading the partition `key` goes to (the producer's murmur2 partitioner)."""
    topics = (metadata or _metadata(settings)).topics
    return int(topics[topic].partitions[murmur2(key) % len(topics[topic].partitions)].leader)


def transaction_coordinator(settings: Any, transactional_id: str, metadata: Any = None) -> int:
    """The broker coordinating a transactional id: the leader of its __transaction_state partition
    (Kafka: Utils.abs(transactionalId.hashCode) % partitions)."""
    partitions = (metadata or _metadata(settings)).topics[TRANSACTION_STATE].partitions
    h = java_hash(transactional_id)
    return int(partitions[(0 if h == -(1 << 31) else abs(h)) % len(partitions)].leader)


def committing_chunk(ledger: Any, job_id: str, timeout_s: float = 15.0) -> int | None:
    """A chunk caught at its commit: every row sent (its progress at its row count), no result yet; None if no
    chunk was seen there within `timeout_s`. Commit takes tens of milliseconds: Redis is polled every 2 ms."""
    rows = {c.index: c.rows for c in ledger.plan(job_id).chunks}
    key = f"k2:job:{job_id}:progress"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for index, done in ledger.redis.hgetall(key).items():
            if int(done) == rows[int(index)] and ledger.chunk_result(job_id, int(index)) is None:
                return int(index)
        time.sleep(0.002)
    return None


def _metadata(settings: Any) -> Any:
    from k2jobs.kafka.topics import admin_client

    return admin_client(settings).list_topics(timeout=10)


def fully_replicated(settings: Any) -> bool:
    """Every partition of every topic has all its replicas in sync (a rolling restart may go on)."""
    try:
        metadata = _metadata(settings)
    except Exception:  # noqa: BLE001 - not answering is not replicated
        return False
    return len(metadata.brokers) == 3 and all(
        p.leader >= 0 and sorted(p.isrs) == sorted(p.replicas)
        for t in metadata.topics.values()
        for p in t.partitions.values()
    )


def broker_pids(env: dict[str, str]) -> dict[int, int | None]:
    status = json.loads(run_k2(env, "stack", "status", "--json", check=True).stdout)
    return {b["id"]: b["pid"] for b in status["brokers"]}


def wait_until(condition: Callable[[], bool], timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def gone(pid: int) -> bool:
    from k2jobs.stack.processes import is_zombie

    return not Path(f"/proc/{pid}").exists() or is_zombie(pid)


def read_job(settings: Any, ledger: Any, job_id: str) -> list[Any]:
    """The job's committed messages (read_committed), in partition order."""
    from k2jobs.jobs.verify import read_job_messages

    since_ms = int(float(ledger.job_meta(job_id)["created"]) * 1000) - 60_000
    messages = read_job_messages(settings, job_id, since_ms=since_ms)
    return sorted(messages, key=lambda m: (m.topic, m.partition, m.offset))


def out_of_order(messages: list[Any]) -> int:
    """How often a key's messages, read in partition order, break file order (tests.reference)."""
    return len(key_order_violations(messages))


def count_exactness(messages: list[Any], rows: int) -> tuple[int, int]:
    """(lost, duplicated) rows among `messages` for a job of `rows` rows."""
    sources = Counter(m.source for m in messages)
    return rows - len(sources), sum(n - 1 for n in sources.values())
