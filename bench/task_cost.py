"""The fixed cost of one task (one Kafka transaction), step by step, against the bench stack.

Every step a task pays whatever its rows, run in this process with k2jobs' own code, `--tasks` times over the
tasks of a real job plan (one key, 1,000-row chunks, a task each), with no rows sent:

- producer: a new transactional producer and `init_transactions` (this fences every earlier attempt);
- committed check: the commit-marker search a re-run does before publishing (a first attempt skips it);
- Redis before: `start_attempt`, the lease, the done check (`chunk_results`), the lease keeper thread;
- transaction: `begin`, the commit marker, `commit_transaction` (the coordinator's two-phase commit);
- Redis after: the results (one Lua script), `end_attempt`, releasing the lease, marking the next task queued;
- producer close.

Celery's share (the message, acks, the result backend, events, the chain's next message) is what the
end-to-end cost per task measured by `shapes.py` leaves after these. Prints a table of medians and writes
bench/results/task_cost.{md,json}. The bench stack must be up (`make bench-shapes` leaves it with --keep-stack;
otherwise this starts it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes  # noqa: E402 - the one-key input

import bench  # noqa: E402 - the bench stack and report helpers

STEPS = ("producer", "committed check", "Redis before", "transaction", "Redis after", "producer close")


def measure(tasks: int) -> dict[str, list[float]]:
    """Milliseconds of each step, per task."""
    from k2jobs.config import load_settings
    from k2jobs.jobs.submit import new_job_id
    from k2jobs.kafka.markers import COMMITS_PARTITION, COMMITS_TOPIC, MarkerReader, marker_end, marker_key
    from k2jobs.kafka.producer import ChunkTransaction
    from k2jobs.kafka.topics import ensure_topics
    from k2jobs.load.results import chunk_result
    from k2jobs.plan.status import ChunkStatus
    from k2jobs.sources.local import plan_job
    from k2jobs.store.leases import LeaseKeeper, take_lease
    from k2jobs.store.ledger import Ledger, connect

    env = bench.bench_env()
    settings = load_settings(env)
    ensure_topics(settings)
    one = shapes.write_shape("1x360000", 1, shapes.ROWS)
    plan = plan_job(one, one, 1000, task_rows=1000)
    ledger, markers = Ledger(connect(settings.redis_url)), MarkerReader(settings)
    job_id = new_job_id()
    ledger.create_job(job_id, plan, {}, marker_start=marker_end(settings))
    worker = f"task-cost@{os.uname().nodename}"
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    clock = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        times[step].append((now - clock[0]) * 1000)
        clock[0] = now

    counts = {"published": 0, "rejected": 0, "reasons": []}
    for chunk in plan.chunks[:tasks]:
        index, key = chunk.index, marker_key(job_id, chunk.index)
        holder = {"worker": worker, "pid": os.getpid(), "token": uuid.uuid4().hex}
        clock[0] = time.perf_counter()
        seen = ledger.start_attempt(job_id, index, worker, 60)
        assert take_lease(ledger, job_id, index, holder)
        keeper = LeaseKeeper(ledger, job_id, index, holder)
        keeper.start()
        assert ledger.chunk_results(job_id, [index]) == [None]
        lap("Redis before")
        txn = ChunkTransaction(settings, job_id, index)
        lap("producer")
        assert markers.find(key, seen["marker_start"]) is None
        lap("committed check")
        txn.begin()
        txn.send(COMMITS_TOPIC, key, json.dumps(counts).encode(), [("job_id", job_id.encode())], COMMITS_PARTITION)
        txn.commit()
        lap("transaction")
        ledger.record_results(job_id, [chunk_result(chunk, ChunkStatus.COMMITTED, counts)])
        ledger.end_attempt(job_id, index)
        keeper.stop()
        ledger.mark_queued(job_id, [index + 1])
        lap("Redis after")
        del txn  # the last reference: librdkafka's producer is destroyed here, as at the end of a worker's task
        lap("producer close")
    markers.close()
    return times


def report(times: dict[str, list[float]], tasks: int) -> str:
    date = datetime.now().astimezone().isoformat(timespec="seconds")
    medians = {step: statistics.median(values) for step, values in times.items()}
    p90 = {step: sorted(values)[int(len(values) * 0.9)] for step, values in times.items()}
    lines = [
        f"# k2jobs: the fixed cost of one task ({date}, nproc {os.cpu_count()}, {tasks} tasks, no rows)\n",
        "| step | median ms | p90 ms |",
        "|---|---:|---:|",
        *[f"| {step} | {medians[step]:.2f} | {p90[step]:.2f} |" for step in STEPS],
        f"| **sum, first attempt (no committed check)** | {sum(medians.values()) - medians['committed check']:.2f} | |",
        f"| **sum, a re-run** | {sum(medians.values()):.2f} | |",
        "",
    ]
    text = "\n".join(lines)
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    (bench.RESULTS / "task_cost.md").write_text(text)
    payload = {"date": date, "tasks": tasks, "median_ms": medians, "p90_ms": p90}
    (bench.RESULTS / "task_cost.json").write_text(json.dumps(payload, indent=2) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks to time (at most 360)")
    parser.add_argument("--keep-stack", action="store_true", help="leave the bench stack running at the end")
    args = parser.parse_args(argv)
    env = bench.bench_env()
    os.environ.update({k: v for k, v in env.items() if k.startswith("K2_")})
    tasks = min(args.tasks, 360)
    try:
        bench.start_workers(env, 2)
        times = measure(tasks)
    except bench.BenchError as exc:
        print(f"task_cost: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep_stack:
            bench.stop_stack(env)
    print(report(times, tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
