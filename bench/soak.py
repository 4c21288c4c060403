"""Soak: overlapping jobs on a three-broker stack while workers, brokers and Redis are killed -9 at random moments.

    make soak                      # 10 minutes (SOAK_MINUTES=3 make soak for 3)
    python bench/soak.py --minutes 3 --seed 42

Runs its own stack (`stack up --brokers 3`, folder .k2stack-test[-SLOT]-soak, ports 20 above the test stack's, moved
by K2_TEST_SLOT like the tests'). Each round submits two or three jobs a few seconds apart, so they share the
workers and queue behind each other; each loads tiled trades and quotes of data/sample. During a round, one
to three faults (a worker, a broker or Redis, kill -9, then `stack up`). A job that has no report within
--job-bound seconds counts as stuck: it is never resumed. Each job's report is watched from submit on: a job
reported failed (every fault here is one it must ride out), or whose report changes once saved, counts as
wrongly reported. Each finished job is read back (read_committed) and checked. Prints one table: jobs,
faults, rows, lost, duplicated, out of order (a key's `source` line going backwards within a file, read in
partition order), stuck, wrongly reported. Exit 1 unless all of the last five are zero.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cluster import (  # noqa: E402 - the repository's helpers, found through the path set above
    SAMPLE,
    broker_pids,
    cluster_env,
    count_exactness,
    gone,
    out_of_order,
    read_job,
    run_k2,
    settings_of,
    wait_until,
)

ENV = cluster_env(int(os.environ.get("K2_TEST_SLOT") or 0), name="soak", offset=20)
FAULTS = ("worker", "broker", "redis")
COUNTED = ("lost", "duplicated", "out of order", "stuck", "wrongly reported")


def write_input(root: Path, trade_tiles: int, quote_tiles: int) -> None:
    for kind, tiles in (("trades", trade_tiles), ("quotes", quote_tiles)):
        (root / kind).mkdir(parents=True, exist_ok=True)
        (root / kind / "7078.csv").write_bytes((SAMPLE / kind / "7078.csv").read_bytes() * tiles)
    (root / "reference-data").mkdir(exist_ok=True)
    (root / "reference-data" / "company_info.csv").write_bytes(
        (SAMPLE / "reference-data" / "company_info.csv").read_bytes()
    )


def stack_up() -> None:
    for _ in range(3):  # Redis or a broker may still be on its way down
        if run_k2(ENV, "stack", "up", "--brokers", "3", "--workers", "2", timeout=600).returncode == 0:
            return
        time.sleep(2)
    raise SystemExit("the soak stack did not come up; see " + ENV["K2_STACK_DIR"] + "/logs")


def inject(kind: str, rng: random.Random) -> None:
    """kill -9 one process of the stack (a worker with its children, a broker, Redis), then restart it."""
    status = json.loads(run_k2(ENV, "stack", "status", "--json", check=True).stdout)
    if kind == "worker":
        pid = rng.choice([w["pid"] for w in status["workers"] if w["pid"]])
    elif kind == "broker":
        pid = rng.choice([p for p in broker_pids(ENV).values() if p])
    else:
        pid = status["redis"]["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: gone(pid), what=f"the {kind} to die")
    time.sleep(rng.uniform(0.0, 3.0))
    stack_up()


def report_of(ledger: Any, job_id: str) -> dict[str, Any] | None:
    try:
        return ledger.report(job_id)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - Redis restarting: not yet
        return None


class ReportWatch(threading.Thread):
    """Every status a job's report shows from submit until the round ends, in order."""

    def __init__(self, ledger: Any, job_id: str) -> None:
        super().__init__(daemon=True)
        self.ledger, self.job_id, self.seen = ledger, job_id, []  # type: ignore[var-annotated]
        self.stopping = threading.Event()
        self.submitted, self.took_s = time.monotonic(), float("nan")

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            report = report_of(self.ledger, self.job_id)
            if report is not None and (not self.seen or self.seen[-1] != report["status"]):
                self.seen.append(report["status"])
                self.took_s = time.monotonic() - self.submitted


def submit(ledger: Any, args: argparse.Namespace, table: Counter[str]) -> ReportWatch:
    done = run_k2(ENV, "submit", "input", "--no-wait", "--json", "--again", "--chunk-rows", str(args.chunk_rows))
    if done.returncode != 0:
        raise SystemExit(f"submit failed: {done.stderr}")
    watch = ReportWatch(ledger, json.loads(done.stdout)["job_id"])
    watch.start()
    table["jobs"] += 1
    return watch


def run_round(settings: Any, ledger: Any, rng: random.Random, args: argparse.Namespace, table: Counter[str]) -> None:
    """Two or three overlapping jobs, one to three faults while they run, then every job checked."""
    watches = [submit(ledger, args, table)]
    for _ in range(rng.randint(1, 2)):
        time.sleep(rng.uniform(0.0, 3.0))
        watches.append(submit(ledger, args, table))
    for _ in range(rng.randint(1, 3)):
        time.sleep(rng.uniform(0.0, 2.0))
        if all(report_of(ledger, w.job_id) is not None for w in watches):
            break
        kind = FAULTS[table["faults"] % len(FAULTS)]  # each kind in turn: every run kills all three
        inject(kind, rng)
        table["faults"] += 1
        table[f"{kind} kills"] += 1
    deadline = time.monotonic() + args.job_bound
    while time.monotonic() < deadline and any(report_of(ledger, w.job_id) is None for w in watches):
        time.sleep(1)
    time.sleep(1)  # a report that would change after it was saved: give the watches a moment to see it
    for watch in watches:
        watch.stopping.set()
        watch.join()
        check_job(settings, ledger, watch, table, args.job_bound)


def check_job(settings: Any, ledger: Any, watch: ReportWatch, table: Counter[str], bound_s: float) -> None:
    job_id = watch.job_id
    rows = int(ledger.job_meta(job_id)["rows"])
    table["rows"] += rows
    report = report_of(ledger, job_id)
    if report is None:
        table["stuck"] += 1
        print(f"job {job_id}: no report {bound_s:.0f}s after its round's faults (stuck, not resumed)", flush=True)
        return
    messages = read_job(settings, ledger, job_id)
    lost, duplicated = count_exactness(messages, rows)
    backwards = out_of_order(messages)
    wrong = watch.seen != ["succeeded"]
    table["slowest job s"] = max(table["slowest job s"], round(watch.took_s))
    table["lost"] += lost
    table["duplicated"] += duplicated
    table["out of order"] += backwards
    table["wrongly reported"] += wrong
    print(
        f"job {job_id}: {report['status']} after {watch.took_s:.0f}s (reports seen: {', '.join(watch.seen)}), "
        f"{rows} rows, lost {lost}, "
        f"duplicated {duplicated}, out of order {backwards}",
        flush=True,
    )


def format_table(table: Counter[str], minutes: float, seed: int) -> str:
    columns = ["jobs", "faults", "rows", *COUNTED]
    lines = [
        f"soak: {minutes:g} min, seed {seed}, faults: "
        + ", ".join(f"{table[k + ' kills']} {k}" for k in FAULTS)
        + f" (kill -9); slowest job {table['slowest job s']} s from submit to report",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" for _ in columns) + "|",
        "| " + " | ".join(str(table[c]) for c in columns) + " |",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES") or 10))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--chunk-rows", type=int, default=30_000)
    # Jobs of 2,152,955 rows (20-50 s each): with smaller ones a round ends before most kills land in it.
    parser.add_argument("--trade-tiles", type=int, default=15)
    parser.add_argument("--quote-tiles", type=int, default=10)
    parser.add_argument(
        "--job-bound", type=float, default=180.0, help="seconds after a round's faults before its jobs count as stuck"
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    write_input(Path(ENV["K2_DATA_ROOT"]) / "input", args.trade_tiles, args.quote_tiles)
    stack_up()
    from k2jobs.store.ledger import Ledger, connect

    settings = settings_of(ENV)
    ledger = Ledger(connect(settings.redis_url))
    table: Counter[str] = Counter()
    deadline = time.monotonic() + args.minutes * 60
    while time.monotonic() < deadline:
        run_round(settings, ledger, rng, args, table)
    sys.stdout.write(format_table(table, args.minutes, seed))
    if not os.environ.get("SOAK_KEEP_STACK"):
        run_k2(ENV, "stack", "down", timeout=300)
    return 1 if any(table[c] for c in COUNTED) else 0


if __name__ == "__main__":
    sys.exit(main())
