"""What a waiting client can see when a job stops moving: stuck chunks, workers, the queue, Redis, Kafka."""

from __future__ import annotations

from typing import Any

from redis import RedisError

from k2jobs.config import Settings, masked_url
from k2jobs.errors import K2Error
from k2jobs.store.keys import CHUNK_QUEUE
from k2jobs.store.ledger import Ledger

ASK_WORKERS_S = 1.0  # how long to wait for workers' replies to a broadcast
MAX_LISTED = 8  # stuck chunks named one by one; the rest are counted


def stuck_chunks(ledger: Ledger, job_id: str) -> list[str]:
    """The job's chunks without a final result, each with its file and the rows its current attempt did."""
    plan = ledger.plan(job_id)
    results = ledger.results(job_id)
    done = ledger.chunk_progress(job_id)
    stuck = [c for c in plan.chunks if c.index not in results]
    named = [f"chunk {c.index} ({c.path}, {done.get(c.index, 0)}/{c.rows} rows)" for c in stuck[:MAX_LISTED]]
    if len(stuck) > MAX_LISTED:
        named.append(f"{len(stuck) - MAX_LISTED} more")
    return named


def _workers(app: Any) -> list[str]:
    """Who consumes the chunk queue and what they are running, as Celery's broadcast replies tell."""
    inspect = app.control.inspect(timeout=ASK_WORKERS_S)
    queues: dict[str, list[dict[str, Any]]] = inspect.active_queues() or {}
    if not queues:
        return [f"no worker answered within {ASK_WORKERS_S:.0f}s (none running, or all busy or stopped)"]
    consuming = sorted(name for name, qs in queues.items() if any(q.get("name") == CHUNK_QUEUE for q in qs))
    if not consuming:
        return [f"no worker consumes queue {CHUNK_QUEUE} ({len(queues)} answered: {', '.join(sorted(queues))})"]
    found = [f"{len(consuming)} worker(s) consume {CHUNK_QUEUE}: {', '.join(consuming)}"]
    for name, tasks in sorted((inspect.active() or {}).items()):
        # A chunk task's second argument is its chunk index (task messages carry ids, not plans); older ones, a dict.
        args = [t["args"][1] for t in tasks if t.get("name") == "k2jobs.process_chunk"]
        chunks = [str(a["index"] if isinstance(a, dict) else a) for a in args]
        if chunks:
            found.append(f"{name} is running chunk {', '.join(chunks)}")
    return found


def _queue_length(app: Any) -> int:
    """Tasks waiting in the chunk queue (not yet delivered to any worker), as the broker counts them."""
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1)
        return int(conn.default_channel.queue_declare(CHUNK_QUEUE).message_count)


def describe_stall(settings: Settings, ledger: Ledger, job_id: str) -> list[str]:
    """Lines saying which chunks are stuck and what can be seen of workers, queue, Redis and Kafka."""
    from k2jobs.app import app
    from k2jobs.kafka.preflight import check_kafka

    lines = []
    try:
        ledger.ping()
    except K2Error as exc:
        return [f"Redis at {masked_url(settings.redis_url)} is unreachable ({exc}): no chunk can record progress"]
    try:
        stuck = stuck_chunks(ledger, job_id)
        lines.append("stuck: " + ("; ".join(stuck) if stuck else "none (every chunk has a result; reconciling)"))
        lines.extend(_workers(app))
        waiting = _queue_length(app)
        lines.append(f"queue {CHUNK_QUEUE} holds {waiting} task(s) no worker has taken" if waiting else
                     f"queue {CHUNK_QUEUE} is empty (every chunk task was taken by a worker, or lost)")  # fmt: skip
    except (RedisError, OSError, K2Error) as exc:
        lines.append(f"Redis stopped answering ({exc})")
    try:
        check_kafka(settings, timeout_s=3.0)
    except K2Error as exc:
        lines.append(f"{exc}: no chunk can publish")
    else:
        lines.append(f"Redis at {masked_url(settings.redis_url)} and Kafka at {settings.kafka_bootstrap} answer")
    return lines
