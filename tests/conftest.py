"""Test set-up: a test stack of real services on their own ports, started once per session.

The environment is set here, at import, because celeryconfig reads it when Celery first loads.
Set K2_TEST_KEEP_STACK=1 to leave the stack running between local runs (faster iteration).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# K2_TEST_SLOT=N (default 0) moves the test stack (Redis, Kafka, Flower, schema registry) to other ports
# and folder, so several checkouts can run their suites side by side on one machine.
SLOT = int(os.environ.get("K2_TEST_SLOT") or 0)
TEST_STACK = REPO / (".k2stack-test" if SLOT == 0 else f".k2stack-test-{SLOT}")
DATA_ROOT = TEST_STACK / "data-root"
SAMPLE = REPO / "data" / "sample"
PORT_SHIFT = 100 * SLOT

TEST_ENV = {
    "K2_REDIS_URL": f"redis://127.0.0.1:{16379 + PORT_SHIFT}/0",
    "K2_KAFKA_BOOTSTRAP": f"127.0.0.1:{19092 + PORT_SHIFT}",
    "K2_STACK_DIR": str(TEST_STACK),
    "K2_FLOWER_PORT": str(15555 + PORT_SHIFT),
    "K2_S3_PORT": str(17070 + PORT_SHIFT),
    "K2_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{18081 + PORT_SHIFT}/apis/ccompat/v7",
    "K2_DATA_ROOT": str(DATA_ROOT),
    "K2_VISIBILITY_TIMEOUT": "20",
    "K2_STALL_AFTER": "5",
    # Progress written every 10 ms: chunks take ~0.13 s here, and the fault tests strike while one is part-way
    # (tests/test_faults.py mid_job), which the default 0.1 s showed once per chunk at best.
    "K2_PROGRESS_EVERY_S": "0.01",
    # A 1 MB client queue (8 MB by default): progress counts rows queued, and chunks queue from C faster than the
    # broker takes them, so with 8 MB a 60,000-row chunk showed 50% at once and then sat at 90%+ while flushing;
    # the fault tests strike while a chunk is part-way, which then was seldom seen.
    "K2_KAFKA_OPT_QUEUE_BUFFERING_MAX_KBYTES": "1024",
    # Short Kafka transactions, so a worker stopped longer than one is a test of seconds, not minutes.
    "K2_KAFKA_OPT_TRANSACTION_TIMEOUT_MS": "15000",
    "K2_KAFKA_OPT_MESSAGE_TIMEOUT_MS": "10000",
    # No broker warm-up in `stack up` (10 s of traffic by default): nothing here measures speed, and fault tests that
    # restart brokers would wait for it. tests/test_bench.py runs `stack up` with it; test_broker_warm_up.py tests it.
    "K2_BROKER_WARM_UP_S": "0",
}
os.environ.update(TEST_ENV)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def run_k2(
    *args: str, check: bool = False, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path = DATA_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run `python -m k2jobs ...` as a user would, from the data root."""
    return subprocess.run(
        [sys.executable, "-m", "k2jobs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@pytest.fixture(scope="session")
def settings():  # type: ignore[no-untyped-def]
    from k2jobs.config import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def stack(settings) -> Iterator[dict]:  # type: ignore[no-untyped-def,type-arg]
    """The real Redis, Kafka broker, two Celery workers and Flower, up for the whole session."""
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(DATA_ROOT / "sample", ignore_errors=True)
    shutil.copytree(SAMPLE, DATA_ROOT / "sample")
    # Through the CLI, as a user would: the services outlive it and are not this process's children.
    up = run_k2("stack", "up", "--workers", "2", "--s3", "--json", timeout=600)
    assert up.returncode == 0, up.stderr
    yield json.loads(up.stdout)
    if not os.environ.get("K2_TEST_KEEP_STACK"):
        run_k2("stack", "down", timeout=300)


@pytest.fixture()
def ledger(stack, settings):  # type: ignore[no-untyped-def]
    from k2jobs.store.ledger import Ledger, connect

    return Ledger(connect(settings.redis_url))


@pytest.fixture()
def workdir(stack, request) -> Path:  # type: ignore[no-untyped-def]
    """A fresh folder inside the data root, for input a test writes."""
    path = DATA_ROOT / "work" / request.node.name.replace("[", "-").replace("]", "")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture()
def read_back(settings, ledger):  # type: ignore[no-untyped-def]
    """read_back(job_id, topics=None): the job's committed messages, read from its start time on."""
    from k2jobs.jobs.verify import read_job_messages

    def read(job_id: str, topics: list[str] | None = None) -> list:  # type: ignore[type-arg]
        since_ms = int(float(ledger.job_meta(job_id)["created"]) * 1000) - 60_000
        return list(read_job_messages(settings, job_id, topics, since_ms=since_ms))

    return read


def ask_workers(app, question: str, workers: set[str] | None = None) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """A Celery inspect call on a new connection (a pooled one may be a socket a restarted Redis closed).

    Without `workers` it waits its whole timeout for whoever answers; with them, until they all have."""
    named = {"destination": sorted(workers), "limit": len(workers)} if workers else {}
    with app.connection_for_write() as connection:
        return getattr(app.control.inspect(timeout=2, connection=connection, **named), question)() or {}


def _tell_workers(app, command: str, workers: set[str]) -> None:  # type: ignore[no-untyped-def]
    with app.connection_for_write() as connection:
        getattr(app.control, command)(
            "k2jobs.chunks",
            destination=sorted(workers),
            reply=True,
            limit=len(workers),
            timeout=5,
            connection=connection,
        )


def _chunk_consumers(app, workers: set[str]) -> set[str]:  # type: ignore[no-untyped-def]
    queues = ask_workers(app, "active_queues", workers)
    return {name for name, consumed in queues.items() if any(q["name"] == "k2jobs.chunks" for q in consumed)}


@contextmanager
def chunk_consumers_paused() -> Iterator[None]:
    """The stack's workers stop taking chunks (queued chunks wait), and surely take them again afterwards.

    Celery's control commands are broadcast and not acknowledged by every worker: each is repeated until
    the workers' queue lists show it took effect.
    """
    from k2jobs.app import app

    workers = set(ask_workers(app, "ping"))
    for _ in range(10):
        _tell_workers(app, "cancel_consumer", workers)
        if not _chunk_consumers(app, workers) & workers:
            break
    else:
        raise AssertionError("the workers did not stop consuming k2jobs.chunks")
    try:
        yield
    finally:
        for _ in range(10):
            _tell_workers(app, "add_consumer", workers)
            if workers <= _chunk_consumers(app, workers):
                break
        else:
            raise AssertionError("the workers did not consume k2jobs.chunks again")
