"""The embedded Celery worker behind pytest-celery's classic fixtures, running the real chunk task.

The worker runs in a thread of this process, consuming a queue of its own, so the stack's workers
never see these tasks and this test sees exactly what the task does.
"""

from __future__ import annotations

import pytest

from .conftest import DATA_ROOT

QUEUE = "k2jobs.embedded-test"


@pytest.fixture()
def embedded_worker(stack):  # type: ignore[no-untyped-def]
    """celery.contrib.testing's embedded worker (what pytest-celery's classic fixtures start) for the k2jobs app.

    pytest-celery 1.x names its Docker-based fixtures `celery_worker`, which cannot run here; the
    embedded worker underneath the classic fixtures is used directly.
    """
    from celery.contrib.testing.worker import start_worker

    from k2jobs.app import app
    from k2jobs.worker.clients import close_worker_clients

    with start_worker(app, pool="solo", queues=(QUEUE,), perform_ping_check=False, shutdown_timeout=30):
        yield app
    close_worker_clients()  # the task built them in this process


def test_embedded_worker_loads_a_chunk_and_a_rerun_returns_the_same_result(
    embedded_worker, ledger, read_back, settings
) -> None:  # type: ignore[no-untyped-def]
    from k2jobs.jobs.submit import new_job_id
    from k2jobs.kafka.topics import ensure_topics
    from k2jobs.sources.local import plan_job

    ensure_topics(settings)
    plan = plan_job(DATA_ROOT, DATA_ROOT / "sample", 100_000, task_rows=1)  # each chunk a task of its own
    job_id = new_job_id()
    ledger.create_job(job_id, plan, {})
    chunk = next(c for c in plan.chunks if c.path == "trades/7181.csv")
    task = "k2jobs.process_chunk"
    first = embedded_worker.send_task(task, args=(job_id, chunk.index), queue=QUEUE).get(timeout=60)
    again = embedded_worker.send_task(task, args=(job_id, chunk.index), queue=QUEUE).get(timeout=60)
    assert first["status"] == "committed" and first["published"] == 232
    assert again == first
    sources = [m.source for m in read_back(job_id)]
    assert len(sources) == 232 == len(set(sources))
