"""Years of data in one job: how submit, the first message, the rate, memory, Redis and the bytes read grow with it.

One warm bench stack (bench/bench.py's, on its own ports), 2 workers, trades only. Each shape is written once under
bench/.work/scale/ (free disk is checked first; --remove deletes each shape after it is measured):

| shape | files | rows |
|---|---:|---:|
| 8 files | 8 | 2.2M (85 MB) |
| 1 GB | 8 | ~27M |
| 5 GB | 8 | ~135M |
| 100,000 files | 100,000 of 22 rows | 2.2M |
| 1,000,000 files | 1,000,000 of 2-22 rows | ~12M |

For each shape, with the page cache dropped first (so that the input is read from the disk, as terabytes are):

- listing: the directory walk alone (`os.scandir` of trades/), timed in this process;
- submit returns: `submit --no-wait`, from launch to exit (the job is enqueued), with its peak RSS and bytes read;
- first message: the first record a `read_committed` consumer (assigned at the topic's end before submit starts)
  receives, counted from submit's launch;
- rows/s: the rows published over the time from submit's launch to the report;
- workers' RSS: the peak (VmHWM) of each worker main and pool process, fresh workers for each shape; the highest of
  them and their sum;
- Redis: `used_memory` growth during the job (its peak, sampled every 0.2 s) and after it;
- bytes read: /proc/PID/io `rchar` (every byte read, through the page cache or from sockets: an overestimate) of
  submit and of every worker process over the job, against the input; `read_bytes` (from the disk) beside it.

Also the raw-produce ceiling (one Python process, the 8 files' raw lines) and the naive loader on the 100,000 files.

A shape whose worker or submit process passes --rss-limit-mb (default 6,000: the machine has no swap) is stopped and
recorded as such, with the stack started again for the next one.

Issue 33's targets, asserted with --check (exit 1 when one is missed):
1. submit returns within 2 s + listing for 1 GB, 5 GB and 100,000 files; the first message within 3 s of submit's
   launch up to 100,000 files, and within listing + 3 s beyond;
3. bytes read at most 1.05x the input (plain files);
5. every worker process's peak RSS < 150 MB; submit's < 500 MB for 1,000,000 files; Redis grows by at most 256 bytes
   per file and per chunk while a job runs;
6. 100,000 files at >= 0.5x the 8 files' rows/s and >= 2x the naive loader on them; 1,000,000 files load;
7. 5 GB at >= 0.9x the 8 files' rows/s.

Writes bench/results/scale.{md,json}. `--shapes 8files,100k` measures some of them; --smoke: tiny shapes, no
targets, no cache dropping (the test suite's check that this script runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes as shape_files  # noqa: E402 - how the shapes' files are written

import bench  # noqa: E402 - the bench stack, the loaders and the report helpers are bench.py's

SCALE = bench.WORK / "scale"
ROW_BYTES = 38.7  # the sample's trade rows, on average
# name -> (files, rows in each file: an int, or (fewest, most) spread over the files)
SHAPES: dict[str, tuple[int, Any]] = {
    "8files": (8, 274_893),
    "1gb": (8, round(1e9 / ROW_BYTES / 8)),
    "5gb": (8, round(5e9 / ROW_BYTES / 8)),
    "100k": (100_000, 22),
    "1m": (1_000_000, (2, 22)),
}
SMOKE_SHAPES: dict[str, tuple[int, Any]] = {"8files": (8, 2_000), "100k": (300, 22), "1m": (600, (2, 22))}
LABELS = {
    "8files": "8 files",
    "1gb": "8 files, 1 GB",
    "5gb": "8 files, 5 GB",
    "100k": "100,000 files of 22 rows",
    "1m": "1,000,000 files of 2-22 rows",
}
LISTED = ("1gb", "5gb", "100k")  # target 1: submit within 2 s + listing
MANY_FILES = ("100k", "1m")  # target 5: Redis per file and chunk
FIRST_MESSAGE_S = 3.0
RSS_MB = 150.0
SUBMIT_RSS_MB = 500.0
REDIS_BYTES_PER_ITEM = 256
READ_RATIO = 1.05
MANY_VS_FEW, MANY_VS_NAIVE, BIG_VS_FEW = 0.5, 2.0, 0.9
# Wraps `python -m k2jobs`: at exit, its peak RSS and its /proc io go to the file K2_BENCH_SELF names.
SELF_REPORT = """
import atexit, os, runpy, sys
def report():
    status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    io = dict(l.split(": ") for l in open("/proc/self/io").read().splitlines())
    with open(os.environ["K2_BENCH_SELF"], "w") as out:
        out.write(f'{int(status["VmHWM"].split()[0])} {int(io["read_bytes"])} {int(io["rchar"])}')
atexit.register(report)
sys.argv = ["k2jobs", *sys.argv[1:]]
runpy.run_module("k2jobs", run_name="__main__")
"""


@dataclass
class Shape:
    """One shape's measurements."""

    name: str
    files: int
    rows: int
    input_bytes: int
    listing_s: float = 0.0
    submit_s: float = 0.0
    first_message_s: float | None = None
    seconds: float = 0.0
    published: int = 0
    chunks: int = 0
    status: str = ""
    worker_peak_mb: float = 0.0
    workers_sum_mb: float = 0.0
    submit_peak_mb: float = 0.0
    redis_during_bytes: int = 0
    redis_after_bytes: int = 0
    bytes_read: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


# -- input -----------------------------------------------------------------------------------------
def rows_of(spec: Any, n: int) -> int:
    """How many rows file `n` of a shape holds."""
    if isinstance(spec, int):
        return spec
    low, high = spec
    return low + n % (high - low + 1)


def write_shape(name: str, files: int, spec: Any) -> Path:
    """The shape's trade files (shapes.write_shape: real rows, one company each), once free disk is checked."""
    need = sum(rows_of(spec, n) for n in range(files)) * ROW_BYTES + files * 4096
    free = shutil.disk_usage(SCALE.parent).free
    if need * 1.1 > free and not (SCALE / name / ".manifest").exists():
        raise bench.BenchError(f"shape {name} needs ~{need / 1e9:.1f} GB of disk, {free / 1e9:.1f} GB free")
    print(f"input: {LABELS[name]} in {SCALE / name} ...", flush=True)
    return shape_files.write_shape(name, files, spec if isinstance(spec, int) else lambda n: rows_of(spec, n), SCALE)


def input_size(root: Path, files: int, spec: Any) -> tuple[int, int, int]:
    """(files, rows, bytes) of a shape's trade files: its files and rows as written, its bytes from a walk."""
    total = 0
    with os.scandir(root / "trades") as listing:
        for entry in listing:
            total += entry.stat().st_size
    return files, sum(rows_of(spec, n) for n in range(files)), total


# -- measuring -------------------------------------------------------------------------------------
def drop_caches(enabled: bool) -> None:
    """Write back, then drop the page cache: the next reads of the input reach the disk, and /proc counts them."""
    os.sync()
    if enabled:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    time.sleep(1)


def listing_s(root: Path) -> float:
    """The directory walk alone: every name and size under trades/."""
    started = time.perf_counter()
    with os.scandir(root / "trades") as listing:
        for entry in listing:
            entry.stat()
    return time.perf_counter() - started


def read_bytes(pids: list[int]) -> dict[int, tuple[int, int]]:
    """/proc/PID/io (read_bytes, rchar) of each process still there: what it read from the disk, and everything it
    read (files through the page cache, and sockets)."""
    found = {}
    for pid in pids:
        try:
            io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        except OSError:
            continue
        found[pid] = (int(io["read_bytes"]), int(io["rchar"]))
    return found


def worker_pids(env: dict[str, str]) -> list[int]:
    status = json.loads(bench.k2(env, "stack", "status", "--json"))
    return bench.proc_tree([w["pid"] for w in status["workers"] if w["pid"]])


class Watch(threading.Thread):
    """While a job runs: the first record a read_committed consumer gets, Redis's peak used_memory, and whether a
    worker process has passed the RSS limit."""

    def __init__(self, env: dict[str, str], bootstrap: str, pids: list[int], rss_limit_mb: float) -> None:
        super().__init__(daemon=True)
        import redis
        from confluent_kafka import Consumer, TopicPartition

        self.redis = redis.Redis.from_url(env["K2_REDIS_URL"])
        self.pids, self.rss_limit_mb = pids, rss_limit_mb
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-scale-{time.time_ns()}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        topic = "market.trades.raw"
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        assigned = []
        for p in partitions:
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            assigned.append(TopicPartition(topic, p, high))
        self.consumer.assign(assigned)
        self.redis_before = int(self.redis.info("memory")["used_memory"])
        self.redis_peak = self.redis_before
        self.first_at: float | None = None
        self.over_limit = ""
        self.stopping = threading.Event()

    def run(self) -> None:
        last_sample = 0.0
        while not self.stopping.is_set():
            if self.first_at is None:
                message = self.consumer.poll(0.05)
                if message is not None and message.error() is None:
                    self.first_at = time.perf_counter()
            else:
                time.sleep(0.05)
            if time.perf_counter() - last_sample >= 0.2:
                last_sample = time.perf_counter()
                self.redis_peak = max(self.redis_peak, int(self.redis.info("memory")["used_memory"]))
                for pid in self.pids:
                    try:
                        rss_mb = bench.memory_kb(pid)["VmRSS"] / 1024
                    except (OSError, KeyError):
                        continue
                    if rss_mb > self.rss_limit_mb and not self.over_limit:
                        self.over_limit = f"worker process {pid} reached {rss_mb:.0f} MB RSS"

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self.consumer.close()


def measure(
    env: dict[str, str], settings: Any, name: str, root: Path, spec: tuple[int, Any], args: argparse.Namespace
) -> Shape:
    """One shape: fresh workers, caches dropped, then submit and the job, watched."""
    from k2jobs.store.ledger import Ledger, connect

    files, rows, size = input_size(root, *spec)
    shape = Shape(f"{name}: {files:,} files, {rows:,} rows", files, rows, size)
    bench.restart_workers(env, 2)
    drop_caches(args.drop_caches)
    shape.listing_s = listing_s(root)
    drop_caches(args.drop_caches)
    pids = worker_pids(env)
    read_before = read_bytes(pids)
    watch = Watch(env, settings.kafka_bootstrap, pids, args.rss_limit_mb)
    watch.start()
    report_file, out_file, err_file = (bench.WORK / f"submit-{what}.txt" for what in ("self", "out", "err"))
    report_file.unlink(missing_ok=True)
    started = time.perf_counter()
    with out_file.open("w") as out, err_file.open("w") as err:
        submit = subprocess.Popen(
            [sys.executable, "-c", SELF_REPORT, "submit", str(root), "--no-wait", "--json", "--again"],
            env={**env, "K2_BENCH_SELF": str(report_file)},
            cwd=bench.REPO,
            stdout=out,
            stderr=err,
        )
        stop_if_over(submit, args.rss_limit_mb, args.timeout_s)
    shape.submit_s = time.perf_counter() - started
    if submit.returncode != 0 or not report_file.exists():
        watch.stop()
        shape.status = f"submit exited {submit.returncode}: {err_file.read_text().strip()[-300:]}"
        return shape
    peak_kb, submit_disk, submit_read = (int(v) for v in report_file.read_text().split())
    shape.submit_peak_mb = peak_kb / 1024
    job_id = json.loads(out_file.read_text())["job_id"]
    shape.extra["job_id"] = job_id
    report_out = bench.WORK / "submit-report.json"  # a file, not a pipe: a big job's report fills a pipe's buffer
    with report_out.open("w") as out:
        waiter = subprocess.Popen(
            [sys.executable, "-m", "k2jobs", "status", job_id, "--wait", "--json"],
            env=env,
            cwd=bench.REPO,
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + args.timeout_s
    while waiter.poll() is None:
        if watch.over_limit or time.monotonic() > deadline:
            waiter.kill()
            break
        time.sleep(0.1)
    shape.seconds = time.perf_counter() - started
    watch.stop()
    if watch.first_at is not None:
        shape.first_message_s = watch.first_at - started
    shape.redis_during_bytes = watch.redis_peak - watch.redis_before
    if watch.over_limit or waiter.returncode is None or waiter.returncode < 0:
        why = watch.over_limit or f"no report within {args.timeout_s:.0f} s"
        shape.status = f"stopped: {why}"
        bench.restart_stack(env, 2)  # the job's messages and the workers' memory go with it
        return shape
    report = json.loads(report_out.read_text())
    shape.status, shape.published = report["status"], report["totals"]["published"]
    meta = Ledger(connect(env["K2_REDIS_URL"])).job_meta(job_id)
    shape.chunks = int(meta["chunks"])
    shape.extra.update(plan_s=float(meta["plan_s"]), enqueue_s=float(meta["enqueue_s"]))
    shape.redis_after_bytes = int(watch.redis.info("memory")["used_memory"]) - watch.redis_before
    read_after = read_bytes(pids)
    # Every byte read, page cache or not (the input that submit read is in the cache when the workers read it), so
    # an overestimate: it includes the processes' reads of Redis's and Kafka's replies.
    shape.bytes_read = submit_read + sum(read_after[p][1] - read_before.get(p, (0, 0))[1] for p in read_after)
    shape.extra["disk_bytes_read"] = submit_disk + sum(
        read_after[p][0] - read_before.get(p, (0, 0))[0] for p in read_after
    )
    memory = bench.worker_memory(env)
    shape.worker_peak_mb = max(p["peak_mb"] for p in memory)
    shape.workers_sum_mb = sum(p["peak_mb"] for p in memory)
    shape.extra["worker_processes"] = memory
    return shape


def stop_if_over(process: subprocess.Popen[bytes], limit_mb: float, timeout_s: float) -> None:
    """Wait for `process`, killing it if its RSS passes `limit_mb` or it runs past `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        try:
            over = bench.memory_kb(process.pid)["VmRSS"] / 1024 > limit_mb
        except (OSError, KeyError):
            over = False
        if over or time.monotonic() > deadline:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.05)


# -- the targets and the table ----------------------------------------------------------------------
def targets(shapes: dict[str, Shape], naive: bench.Result | None) -> dict[str, dict[str, Any]]:
    """Issue 33's targets that the measured shapes allow, each with its value, bound and whether it is met."""
    goals: dict[str, dict[str, Any]] = {}

    def goal(name: str, value: float | None, target: float, at_most: bool) -> None:
        met = value is not None and (value <= target if at_most else value >= target)
        goals[name] = {"value": None if value is None else round(value, 3), "target": round(target, 3), "met": met}

    loaded = {name: s for name, s in shapes.items() if s.status == "succeeded"}
    for name, s in shapes.items():
        if name in LISTED:
            goal(f"submit_s_{name}", s.submit_s, 2.0 + s.listing_s, at_most=True)
        bound = FIRST_MESSAGE_S + (s.listing_s if name == "1m" else 0.0)
        goal(f"first_message_s_{name}", s.first_message_s, bound, at_most=True)
        goal(f"worker_rss_mb_{name}", s.worker_peak_mb if name in loaded else None, RSS_MB, at_most=True)
        items = s.files + s.chunks
        if name in MANY_FILES:  # a job of a few files is all fixed cost (its messages, its report)
            per_item = s.redis_during_bytes / items if items and name in loaded else None
            goal(f"redis_bytes_per_file_and_chunk_{name}", per_item, REDIS_BYTES_PER_ITEM, at_most=True)
        goal(f"bytes_read_ratio_{name}", s.bytes_read / s.input_bytes if name in loaded else None, READ_RATIO, True)
    if "1m" in shapes:
        goal("submit_rss_mb_1m", shapes["1m"].submit_peak_mb or None, SUBMIT_RSS_MB, at_most=True)
        goals["loads_1m"] = {"value": shapes["1m"].status, "target": "succeeded", "met": "1m" in loaded}
    few = loaded.get("8files")
    if few and "100k" in shapes:
        many = shapes["100k"]
        goal("many_files_vs_few", many.rate / few.rate if "100k" in loaded else None, MANY_VS_FEW, at_most=False)
        if naive is not None:
            goal("many_files_vs_naive", many.rate / naive.rate if "100k" in loaded else None, MANY_VS_NAIVE, False)
    if few and "5gb" in shapes:
        goal("5gb_vs_few", shapes["5gb"].rate / few.rate if "5gb" in loaded else None, BIG_VS_FEW, at_most=False)
    return goals


def table(shapes: dict[str, Shape], ceiling: bench.Result | None) -> str:
    lines = [
        "| job | files | rows | MB | listing s | submit returns s | first message s | rows/s | vs ceiling "
        "| worker RSS MB (max, sum) | submit RSS MB | Redis during, after (MB) | bytes read (x input) | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in shapes.values():
        first = "-" if s.first_message_s is None else f"{s.first_message_s:.2f}"
        vs = f"{s.rate / ceiling.rate:.2f}x" if ceiling and s.rate else "-"
        read = f"{s.bytes_read / 1e6:,.0f} MB ({s.bytes_read / s.input_bytes:.2f}x)" if s.input_bytes else "-"
        lines.append(
            f"| {s.name} | {s.files:,} | {s.rows:,} | {s.input_bytes / 1e6:,.0f} | {s.listing_s:.2f} "
            f"| {s.submit_s:.2f} | {first} | {s.rate:,.0f} | {vs} | {s.worker_peak_mb:.0f}, {s.workers_sum_mb:.0f} "
            f"| {s.submit_peak_mb:.0f} | {s.redis_during_bytes / 1e6:.1f}, {s.redis_after_bytes / 1e6:.1f} | {read} "
            f"| {s.status} |"
        )
    if ceiling:
        lines.append(f"\nRaw-produce ceiling ({ceiling.name}): {ceiling.rate:,.0f} rows/s.")
    return "\n".join(lines) + "\n"


def write_results(name: str, shapes: dict[str, Shape], others: list[bench.Result], goals: dict[str, Any]) -> str:
    nproc, date = len(os.sched_getaffinity(0)), datetime.now().astimezone().isoformat(timespec="seconds")
    ceiling = next((r for r in others if r.name.startswith("raw CSV")), None)
    text = "\n".join(
        [
            f"# k2jobs at scale ({date}, nproc {nproc})\n",
            table(shapes, ceiling),
            *(f"- {r.name}: {r.rows:,} rows in {r.seconds:.1f} s, {r.rate:,.0f} rows/s" for r in others),
            "",
            "Targets:\n",
            *(f"- [{'x' if g['met'] else ' '}] {n}: {g['value']} (target {g['target']})" for n, g in goals.items()),
            "",
        ]
    )
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    (bench.RESULTS / f"{name}.md").write_text(text)
    payload = {
        "date": date,
        "nproc": nproc,
        "shapes": [{**s.__dict__, "rows_per_s": round(s.rate)} for s in shapes.values()],
        "others": [{**r.__dict__, "rows_per_s": round(r.rate)} for r in others],
        "targets": goals,
    }
    (bench.RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return text


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="", help=f"which shapes, comma-separated (default all: {','.join(SHAPES)})")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, no targets, to results/scale-smoke.*")
    parser.add_argument("--check", action="store_true", help="exit 1 unless every target is met")
    parser.add_argument("--remove", action="store_true", help="delete each shape's files once it is measured")
    parser.add_argument("--rss-limit-mb", type=float, default=6000.0, help="stop a shape whose process passes this")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="stop a shape that runs longer than this")
    parser.add_argument("--broker-warm-jobs", type=int, default=4, help="untimed loads of the 8 files first")
    parser.add_argument(
        "--no-drop-caches", dest="drop_caches", action="store_false", help="keep the page cache (bytes read: ~0)"
    )
    args = parser.parse_args(argv)
    table_of = SMOKE_SHAPES if args.smoke else SHAPES
    args.names = [name for name in args.shapes.split(",") if name] or list(table_of)
    unknown = [name for name in args.names if name not in table_of]
    if unknown:
        parser.error(f"unknown shapes {unknown}: choose from {','.join(table_of)}")
    if args.smoke:
        args.drop_caches, args.broker_warm_jobs = False, 0
    elif args.drop_caches and os.geteuid() != 0:
        parser.error("dropping the page cache needs root (or pass --no-drop-caches)")
    return args


def main(argv: list[str] | None = None) -> int:
    from k2jobs.config import load_settings

    args = parse_args(argv)
    table_of = SMOKE_SHAPES if args.smoke else SHAPES
    env = bench.bench_env()
    settings = load_settings(env)
    SCALE.mkdir(parents=True, exist_ok=True)
    shapes: dict[str, Shape] = {}
    others: list[bench.Result] = []
    naive = None
    try:
        roots = {name: write_shape(name, *table_of[name]) for name in args.names}
        bench.restart_stack(env, 2)
        bench.ensure_topics(settings.kafka_bootstrap, settings.partitions)
        if args.broker_warm_jobs and "8files" in roots:
            print(f"broker warm-up: {args.broker_warm_jobs} untimed loads of the 8 files ...", flush=True)
            bench.warm_broker(env, args.broker_warm_jobs, roots["8files"])
        for name, root in roots.items():
            print(f"{LABELS[name]} ...", flush=True)
            shapes[name] = measure(env, settings, name, root, table_of[name], args)
            print(table(shapes, None).splitlines()[-1], flush=True)
            if name == "8files":
                files, symbols = shape_files.files_of(root)
                runs = [
                    bench.python_ceiling(
                        settings.kafka_bootstrap, files, symbols, "raw CSV lines, 1 Python process, 8 files"
                    )
                    for _ in range(bench.CEILING_RUNS)
                ]
                others.append(max(runs, key=lambda r: r.rate))
            if name == "100k":
                files, symbols = shape_files.files_of(root)
                naive = bench.naive_loader(
                    settings.kafka_bootstrap, files, symbols, f"naive loader, 1 process, {len(files):,} files"
                )
                others.append(naive)
            if args.remove:
                shutil.rmtree(root, ignore_errors=True)
    except (bench.BenchError, subprocess.TimeoutExpired) as exc:
        print(f"scale: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.stop_stack(env)
    goals = {} if args.smoke else targets(shapes, naive)
    print()
    print(write_results("scale-smoke" if args.smoke else "scale", shapes, others, goals))
    if any(s.status != "succeeded" for s in shapes.values()) and args.smoke:
        return 1
    return bench.exit_status("scale", goals, args.check)


if __name__ == "__main__":
    sys.exit(main())
