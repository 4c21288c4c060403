"""Benchmark k2jobs against Kafka's raw produce ceiling and a naive single-process loader.

One run, one local broker (a k2jobs stack of its own, on its own ports and stack dir):

0. a fresh stack with 1 worker (`stack up` warms the broker it starts), and at once the first job on it,
   --repeat times (a fresh stack each time);
1. tile data/sample into bench/.work/input (--rows trade rows and as many quote rows; cached);
2. raw produce ceiling: Kafka's ProducerPerformance (Java) and one confluent-kafka process
   sending the raw trade CSV lines;
3. a naive loader: csv.reader, strptime + zoneinfo, Decimal, json.dumps and one produce per row;
4. k2jobs end to end with 1 (--repeat runs) and then 2 workers (`submit --wait`, from launch to report; the
   job records how long planning and enqueueing took), with each worker process's peak RSS (VmHWM);
   with 2 workers, in --repeat rounds (3; 1 with --smoke): fresh workers, then the first job after they
   started, then ordered (the default), then --unordered;
5. k2jobs with 2 workers writing Avro (`--format avro`, TradeV2/QuoteV2 through the registry) and JSON
   in turn, --repeat times each, on the same warm workers; then the naive loader writing the same records with
   confluent-kafka's AvroSerializer.

A k2jobs measurement run more than once is its median run (every run's seconds in `extra.runs_s`): identical
loads here vary by up to a third, and a single run decided a target by luck (bench/README.md, 2026-12-06).

The table goes to stdout and to bench/results/latest.{md,json} (smoke.{md,json} with --smoke).
Exit status: 0 when every run loaded what it should, 1 otherwise; with --check, also 1 when a target
is missed (the acceptance check, `make bench-check`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
COMPANY_INFO = Path("reference-data") / "company_info.csv"
BENCH = REPO / "bench"
WORK = BENCH / ".work"
INPUT = WORK / "input"
RESULTS = BENCH / "results"
KINDS = ("trades", "quotes")
COMPANY_IDS = (7078, 7181, 3153)  # ids listed in company_info.csv; tiled rows are spread over them
SMOKE_ROWS = 20_000
CEILING_RUNS = 3
REPEAT = 3  # k2jobs measurements with 2 workers: the median of this many runs, interleaved
BROKER_WARM_JOBS = 16  # warm_broker: the broker's CPU per load stopped falling after about this many here
SIZE_SAMPLE_ROWS = 20_000  # rows per kind used to measure the k2jobs message size
SYDNEY = ZoneInfo("Australia/Sydney")
TOPICS = {
    "java": "bench.raw.java",
    "python": "bench.raw.python",
    "naive": "bench.naive",
    "naive_avro_trades": "bench.naive.avro.trades",
    "naive_avro_quotes": "bench.naive.avro.quotes",
}
# The producer settings k2jobs itself uses (minus transactions), for both ceilings.
FAST_PRODUCER = {"acks": "all", "compression.type": "lz4", "linger.ms": 20, "batch.size": 1_000_000}
# K2_TEST_SLOT=N moves the bench stack's ports by 100*N, as it moves the test stack's: checkouts side by side
# on one machine (whose suites run the bench's smoke test) would otherwise share, and stop, one bench stack.
PORT_SHIFT = 100 * int(os.environ.get("K2_TEST_SLOT") or 0)
STACK_ENV = {
    "K2_STACK_DIR": str(WORK / "stack"),
    "K2_REDIS_URL": f"redis://127.0.0.1:{26379 + PORT_SHIFT}/0",
    "K2_KAFKA_BOOTSTRAP": f"127.0.0.1:{29092 + PORT_SHIFT}",
    "K2_FLOWER_PORT": str(25555 + PORT_SHIFT),
    "K2_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{28081 + PORT_SHIFT}/apis/ccompat/v7",
    "K2_S3_PORT": str(27070 + PORT_SHIFT),
    "K2_DATA_ROOT": str(WORK),
}
JAVA_TOOL = "org.apache.kafka.tools.ProducerPerformance"
QUIET_LOG4J = """\
rootLogger.level = warn
rootLogger.appenderRef.console.ref = STDERR
appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
"""
TARGETS = {
    # Issue 17 raised the big-file targets: >= 5.5x naive, >= 0.6x the raw-produce ceiling, first job >= 0.85x.
    "vs_naive": 5.5,
    "vs_python_ceiling": 0.6,
    "rss_mb": 150.0,
    "ordered_vs_unordered": 0.9,
    "first_job": 0.85,
    "first_job_after_stack_up": 0.85,
    # Issue 33: an Avro value carries the row's message_id and trade or quote id, which a JSON value does not (2.8x
    # the bytes after lz4): Avro >= 0.9x JSON on the same rows, and >= 5x a naive loader that uses AvroSerializer.
    "avro_vs_json": 0.9,
    "avro_vs_naive_avro": 5.0,
}
FIRST_JOB = "k2jobs first job after workers start, 2 workers"
FIRST_AFTER_STACK_UP = "k2jobs first job after stack up, 1 worker"


class BenchError(RuntimeError):
    """A measurement could not be taken or did not load what it should."""


@dataclass
class Result:
    """One measurement: how many rows in how many seconds, and worker memory where relevant."""

    name: str
    rows: int
    seconds: float
    rss_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


# -- input ---------------------------------------------------------------------------------------
def sample_lines(kind: str) -> list[bytes]:
    """Every non-blank line of the sample's files of one kind, without line endings."""
    lines: list[bytes] = []
    for path in sorted((SAMPLE / kind).glob("*.csv")):
        lines += [line for line in path.read_bytes().splitlines() if line.strip()]
    return lines


def split_rows(rows: int) -> dict[int, int]:
    """Rows per company id, as even as possible."""
    share, extra = divmod(rows, len(COMPANY_IDS))
    return {cid: share + (1 if i < extra else 0) for i, cid in enumerate(COMPANY_IDS)}


def write_tiled(path: Path, lines: list[bytes], count: int) -> None:
    """`count` CRLF-terminated lines, repeating `lines` from the start as often as needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    full, rest = divmod(count, len(lines))
    block = b"\r\n".join(lines) + b"\r\n"
    with path.open("wb") as out:
        for _ in range(full):
            out.write(block)
        out.write(b"".join(line + b"\r\n" for line in lines[:rest]))


def input_manifest(rows: int) -> dict[str, Any]:
    """What the input holds, stored next to it to decide whether it can be reused."""
    files = {f"{kind}/{cid}.csv": count for kind in KINDS for cid, count in split_rows(rows).items()}
    return {"rows_per_kind": rows, "files": files}


def input_is_cached(manifest: dict[str, Any]) -> bool:
    saved = WORK / "input-manifest.json"
    stored = json.loads(saved.read_text()) if saved.exists() else {}
    if stored.get("manifest") != manifest:
        return False
    sizes = stored["sizes"]
    return all((INPUT / name).exists() and (INPUT / name).stat().st_size == size for name, size in sizes.items())


def build_input(rows: int) -> Path:
    """Tile the sample into INPUT (rows trade rows, rows quote rows), unless already there."""
    manifest = input_manifest(rows)
    if input_is_cached(manifest):
        print(f"input: reusing {INPUT} ({rows:,} trade + {rows:,} quote rows)")
        return INPUT
    print(f"input: writing {rows:,} trade + {rows:,} quote rows to {INPUT}")
    (WORK / "input-manifest.json").unlink(missing_ok=True)
    for kind in KINDS:
        lines = sample_lines(kind)
        shutil.rmtree(INPUT / kind, ignore_errors=True)
        for cid, count in split_rows(rows).items():
            write_tiled(INPUT / kind / f"{cid}.csv", lines, count)
    (INPUT / COMPANY_INFO).parent.mkdir(parents=True, exist_ok=True)
    (INPUT / COMPANY_INFO).write_bytes((SAMPLE / COMPANY_INFO).read_bytes())
    sizes = {name: (INPUT / name).stat().st_size for name in manifest["files"]}
    (WORK / "input-manifest.json").write_text(json.dumps({"manifest": manifest, "sizes": sizes}, indent=2))
    return INPUT


def company_symbols() -> dict[int, str]:
    with (SAMPLE / COMPANY_INFO).open(newline="", encoding="utf-8-sig") as handle:
        return {int(row["company_id"]): row["symbol"] for row in csv.DictReader(handle)}


def input_files(kinds: tuple[str, ...] = KINDS) -> list[tuple[str, int, Path]]:
    """(kind, company id, path) of every input file."""
    return [(kind, cid, INPUT / kind / f"{cid}.csv") for kind in kinds for cid in COMPANY_IDS]


def write_payloads(path: Path) -> int:
    """Real k2jobs message values (as many trades as quotes) for ProducerPerformance; their mean size."""
    from k2jobs.plan.model import Kind
    from k2jobs.rows.json_rows import RowParser

    now_ms = int(time.time() * 1000)
    values = []
    for kind in Kind:
        parser = RowParser(kind, "BHP", 7078)
        values += [parser.parse(line, now_ms) for line in sample_lines(kind.value)[:SIZE_SAMPLE_ROWS]]
    path.write_bytes(b"\n".join(values) + b"\n")
    return round(sum(map(len, values)) / len(values))


def avro_message_bytes() -> int:
    """The mean size of the same rows' Avro values (wire header included)."""
    from k2jobs.plan.model import Kind
    from k2jobs.rows.avro import AvroRowParser
    from k2jobs.rows.json_rows import decode_line

    now_us = time.time_ns() // 1000
    sizes = []
    for kind in Kind:
        parser = AvroRowParser(kind, "BHP", 7078, f"{kind.value}/7078.csv:", 1)
        lines = sample_lines(kind.value)[:SIZE_SAMPLE_ROWS]
        sizes += [len(parser.parse_line(decode_line(line), now_us, n) or b"") for n, line in enumerate(lines, 1)]
    return round(sum(sizes) / len(sizes))


# -- the stack, through the k2jobs CLI -----------------------------------------------------------
def bench_env() -> dict[str, str]:
    env = {**os.environ, **STACK_ENV}
    for name in [n for n in env if n.startswith("K2_KAFKA_OPT_")]:
        del env[name]  # a plain local broker: no security options from the caller's shell
    return env


def k2(env: dict[str, str], *args: str, timeout: float = 600, ok: tuple[int, ...] = (0,)) -> str:
    """Run `python -m k2jobs ARGS` with the bench environment; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "k2jobs", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode not in ok:
        raise BenchError(f"k2jobs {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def start_workers(env: dict[str, str], workers: int, old: tuple[int, ...] = ()) -> float:
    """`stack up` with `workers` workers, none of them one of the `old` pids; seconds it took."""
    started = time.perf_counter()
    status = json.loads(k2(env, "stack", "up", "--workers", str(workers), "--s3", "--json", timeout=600))
    running = [w for w in status["workers"] if w["pid"] and w["pid"] not in old]
    if len(running) != workers:
        raise BenchError(f"stack up started {len(running)} new workers, wanted {workers}: {status}")
    return time.perf_counter() - started


def restart_stack(env: dict[str, str], workers: int) -> float:
    """Stop the bench stack fully and start it afresh with `workers`; seconds.

    Afresh: the stack's folder (broker logs, Redis) is deleted first. Kept, a day of runs left 16 GB of broker
    logs behind, and every measurement, ceilings included, ran slower and less evenly on top of them.
    """
    k2(env, "stack", "down", timeout=300)
    shutil.rmtree(env["K2_STACK_DIR"], ignore_errors=True)
    return start_workers(env, workers)


def settle() -> None:
    """Before each measurement: the previous one's writes reach the disk, so none measures another's writeback."""
    os.sync()
    time.sleep(1)


def restart_workers(env: dict[str, str], workers: int) -> float:
    """Fresh worker processes (fresh memory peaks), `workers` of them; the broker stays up and warm. Seconds."""
    status = json.loads(k2(env, "stack", "status", "--json"))
    pids = tuple(w["pid"] for w in status["workers"] if w["pid"])
    for pid in pids:
        os.kill(pid, signal.SIGTERM)  # warm shutdown: the worker is idle, so it exits at once
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            raise BenchError(f"workers {pids} did not stop within 60 s")
        time.sleep(0.1)
    return start_workers(env, workers, old=pids)


def warm_up(env: dict[str, str], value_format: str = "json") -> None:
    """Load data/sample once, untimed: a long-running broker and workers are warm (JIT, coordinators)."""
    target = WORK / "warmup"
    if not target.exists():
        shutil.copytree(SAMPLE, target)
    k2(env, "submit", str(target), "--format", value_format, "--json", "--again", timeout=600)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warm_broker(env: dict[str, str], jobs: int, source: Path = INPUT) -> list[dict[str, Any]]:
    """Untimed k2jobs loads of the bench input, JSON and Avro in turn, before anything is measured.

    A fresh broker JIT-compiles its produce and transaction paths for dozens of loads: measured on this machine,
    its CPU for one 2M-row k2jobs job fell from 2.6 s on the first to 0.65 s on the sixteenth, while its JIT
    threads used 9 CPU-s on 2 cores, and a change of value format made it compile again. Without this, a
    measurement's result depends on how many came before it. Every measurement, ceilings included, runs after
    it, on the same warm broker. Each load's seconds and broker CPU go into the results.
    """
    kafka_pid = json.loads(k2(env, "stack", "status", "--json"))["kafka"]["pid"]
    done = []
    for n in range(jobs):
        value_format = ("json", "avro")[n % 2]
        settle()
        cpu, started = process_cpu_s(kafka_pid), time.perf_counter()
        report = json.loads(k2(env, "submit", str(source), "--wait", "--json", "--again", "--format", value_format))
        seconds = time.perf_counter() - started
        if report["status"] != "succeeded":
            raise BenchError(f"warm-up load {report['job_id']} ended {report['status']}: {report['failures'][:3]}")
        broker_cpu = process_cpu_s(kafka_pid) - cpu
        done.append({"format": value_format, "seconds": round(seconds, 2), "broker_cpu_s": round(broker_cpu, 2)})
        print(f"  broker warm-up {n + 1}/{jobs}: {value_format} {seconds:.2f} s, broker {broker_cpu:.2f} CPU-s")
    return done


def stack_warm_up(env: dict[str, str]) -> dict[str, Any]:
    """What `stack up` sent to warm the broker it started (none when K2_BROKER_WARM_UP_S=0)."""
    done = Path(env["K2_STACK_DIR"]) / "broker-warm-up.json"
    return json.loads(done.read_text()) if done.exists() else {}


def stop_stack(env: dict[str, str]) -> None:
    try:
        k2(env, "stack", "down", timeout=300)
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"bench: stopping the stack failed: {exc}", file=sys.stderr)


def proc_tree(pids: list[int]) -> list[int]:
    """`pids` and all their descendants, from the ppid field of /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(") ", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of one process, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            values[name] = int(rest.split()[0])
    return values


def worker_memory(env: dict[str, str]) -> list[dict[str, Any]]:
    """Peak RSS of every Celery worker process (main processes and their pool children)."""
    status = json.loads(k2(env, "stack", "status", "--json"))
    mains = [w["pid"] for w in status["workers"] if w["pid"]]
    rows = []
    for pid in proc_tree(mains):
        with contextlib.suppress(OSError):
            kb = memory_kb(pid)
            role = "main" if pid in mains else "child"
            rows.append({"pid": pid, "role": role, "peak_mb": kb["VmHWM"] / 1024, "rss_mb": kb["VmRSS"] / 1024})
    if not rows:
        raise BenchError("no running worker processes found to measure")
    return rows


# -- raw produce ceilings ------------------------------------------------------------------------
def ensure_topics(bootstrap: str, partitions: int) -> None:
    """The bench's own topics (auto-creation is off on the k2jobs broker)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=10).topics
    missing = [NewTopic(name, partitions, 1) for name in TOPICS.values() if name not in existing]
    for future in admin.create_topics(missing).values() if missing else []:
        future.result()


def java_ceiling(bootstrap: str, records: int, payloads: Path) -> Result:
    """Kafka's own ProducerPerformance, its final summary line parsed."""
    from k2jobs.stack.kafka_nodes import kafka_libs

    log4j = WORK / "log4j2-tools.properties"
    log4j.write_text(QUIET_LOG4J)
    props = [f"{k}={v}" for k, v in {**FAST_PRODUCER, "enable.idempotence": "true"}.items()]
    command = ["java", "-Xmx512m", f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{kafka_libs()}/*", JAVA_TOOL]
    command += ["--topic", TOPICS["java"], "--num-records", str(records), "--payload-file", str(payloads)]
    command += ["--throughput", "-1", "--bootstrap-server", bootstrap, "--command-property", *props]
    settle()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    summaries = re.findall(r"(\d+) records sent, ([\d.]+) records/sec", done.stdout)
    if done.returncode != 0 or not summaries:
        raise BenchError(f"ProducerPerformance failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    sent, rate = int(summaries[-1][0]), float(summaries[-1][1])
    if sent != records:
        raise BenchError(f"ProducerPerformance sent {sent} of {records} records")
    return Result("Kafka ProducerPerformance (Java)", sent, sent / rate, extra={"summary": done.stdout.strip()[-400:]})


def produce(producer: Any, topic: str, value: bytes, key: bytes) -> None:
    """Queue one message, serving delivery reports while the local queue is full."""
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            producer.poll(0.05)


class Deliveries:
    """Delivery report callback: counts successes and failures."""

    def __init__(self) -> None:
        self.ok = self.failed = 0
        self.first_error: str | None = None

    def __call__(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.ok += 1
            return
        self.failed += 1
        self.first_error = self.first_error or str(err)


def python_ceiling(
    bootstrap: str,
    files: list[tuple[str, int, Path]] | None = None,
    symbols: dict[int, str] | None = None,
    name: str = "raw CSV lines, 1 Python process",
) -> Result:
    """One process sending the raw trade CSV lines (of the input, or of `files`), with the settings k2jobs uses."""
    from confluent_kafka import Producer

    symbols, errors = symbols or company_symbols(), Deliveries()
    conf = {"bootstrap.servers": bootstrap, **FAST_PRODUCER, "enable.idempotence": True}
    producer = Producer({**conf, "delivery.report.only.error": True, "on_delivery": errors})
    settle()
    started, sent = time.perf_counter(), 0
    for _kind, cid, path in files or input_files(("trades",)):
        key = f"ASX.{symbols[cid]}".encode()
        for line in path.read_bytes().splitlines():
            produce(producer, TOPICS["python"], line, key)
            sent += 1
            if sent % 1000 == 0:
                producer.poll(0)
    left = producer.flush(120)
    seconds = time.perf_counter() - started
    if left or errors.failed:
        raise BenchError(f"raw produce: {left} undelivered, {errors.failed} failed ({errors.first_error})")
    return Result(name, sent, seconds)


# -- naive loader --------------------------------------------------------------------------------
def naive_value(kind: str, fields: list[str], symbol: str, company_id: int) -> dict[str, Any]:
    """The message a straightforward loader builds from one row."""
    local = datetime.strptime(f"{fields[0]} {fields[1]}", "%m/%d/%Y %H:%M:%S.%f").replace(tzinfo=SYDNEY)
    value: dict[str, Any] = {"symbol": symbol, "company_id": company_id, "exchange": "ASX"}
    value["exchange_timestamp"] = int(local.timestamp() * 1000)
    if kind == "trades":
        value.update(price=Decimal(fields[2]), volume=int(fields[3]), qualifiers=int(fields[4]))
        value.update(venue=fields[5] or None, buyer_id=fields[6] or None)
    else:
        value.update(bid_price=Decimal(fields[2]), ask_price=Decimal(fields[3]))
        value.update(bid_volume=int(fields[4]), ask_volume=int(fields[5]))
    value["ingestion_timestamp"] = int(time.time() * 1000)
    return value


def naive_loader(
    bootstrap: str,
    files: list[tuple[str, int, Path]] | None = None,
    symbols: dict[int, str] | None = None,
    name: str = "naive loader, 1 process",
) -> Result:
    """One process, row by row, over the whole input (trades and quotes, or `files`), as k2jobs loads it."""

    def value(kind: str, fields: list[str], symbol: str, company_id: int, _path: str, _line: int) -> tuple[str, bytes]:
        return TOPICS["naive"], json.dumps(naive_value(kind, fields, symbol, company_id), default=str).encode()

    return naive_run(bootstrap, files or input_files(), symbols or company_symbols(), value, name)


def naive_run(
    bootstrap: str,
    files: list[tuple[str, int, Path]],
    symbols: dict[int, str],
    value: Any,
    name: str,
) -> Result:
    """A naive loader's loop: csv.reader over each file, `value(kind, fields, symbol, company id, path, line)` gives
    each row's (topic, value), one produce and poll(0) per row on a plain idempotent producer; checked delivered."""
    from confluent_kafka import Producer

    deliveries = Deliveries()
    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "on_delivery": deliveries}
    producer = Producer(conf)
    settle()
    started, sent = time.perf_counter(), 0
    for kind, cid, path in files:
        key, relative = f"ASX.{symbols[cid]}".encode(), f"{kind}/{cid}.csv"
        with path.open(newline="", encoding="utf-8") as handle:
            for line_no, fields in enumerate(csv.reader(handle), 1):
                topic, data = value(kind, fields, symbols[cid], cid, relative, line_no)
                produce(producer, topic, data, key)
                producer.poll(0)
                sent += 1
    left = producer.flush(120)
    seconds = time.perf_counter() - started
    if left or deliveries.failed or deliveries.ok != sent:
        raise BenchError(f"{name}: {sent} sent, {deliveries.ok} delivered, {left} left ({deliveries.first_error})")
    return Result(name, sent, seconds)


def naive_avro_record(
    kind: str, fields: list[str], symbol: str, company_id: int, path: str, line_no: int
) -> dict[str, Any]:
    """The TradeV2 / QuoteV2 record a straightforward loader builds from one row (line `line_no` of `path`), as
    AvroSerializer takes it: the fields k2jobs writes, message_id `<path>:<line>:<exchange time µs>` included."""
    value = naive_value(kind, fields, symbol, company_id)
    ts_us = value["exchange_timestamp"] * 1000
    row_id = f"{path}:{line_no}:{ts_us}"
    record: dict[str, Any] = {"message_id": row_id, ("trade_id" if kind == "trades" else "quote_id"): row_id}
    record.update(symbol=symbol, exchange="ASX", asset_class="equities", timestamp=ts_us)
    vendor = {"company_id": str(company_id)}
    if kind == "trades":
        record.update(price=value["price"], quantity=Decimal(value["volume"]), currency="AUD", side="UNKNOWN")
        record["trade_conditions"] = [str(value["qualifiers"])]
        vendor["qualifiers"] = str(value["qualifiers"])
        vendor.update({name: value[name] for name in ("venue", "buyer_id") if value[name]})
    else:
        record.update(bid_price=value["bid_price"], bid_quantity=Decimal(value["bid_volume"]))
        record.update(ask_price=value["ask_price"], ask_quantity=Decimal(value["ask_volume"]), currency="AUD")
    record.update(source_sequence=None, ingestion_timestamp=time.time_ns() // 1000, platform_sequence=line_no)
    record["vendor_data"] = vendor
    return record


def naive_avro_loader(bootstrap: str, registry_url: str) -> Result:
    """The naive loader writing the platform's TradeV2 / QuoteV2 records with confluent-kafka's AvroSerializer
    (one serialize and one produce per row), over the whole input."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from k2jobs.plan.model import Kind
    from k2jobs.rows.avro import schema_text

    registry = SchemaRegistryClient({"url": registry_url})
    serializers = {kind.value: AvroSerializer(registry, schema_text(kind)) for kind in Kind}
    # A topic per kind, as k2jobs has: the registry's subject is the topic's (TopicNameStrategy), one schema each.
    topics = {kind.value: TOPICS[f"naive_avro_{kind.value}"] for kind in Kind}
    contexts = {kind.value: SerializationContext(topics[kind.value], MessageField.VALUE) for kind in Kind}

    def value(kind: str, fields: list[str], symbol: str, company_id: int, path: str, line: int) -> tuple[str, bytes]:
        record = naive_avro_record(kind, fields, symbol, company_id, path, line)
        return topics[kind], serializers[kind](record, contexts[kind])

    return naive_run(
        bootstrap, input_files(), company_symbols(), value, "naive Avro loader (AvroSerializer), 1 process"
    )


# -- k2jobs --------------------------------------------------------------------------------------
def k2jobs_load(
    env: dict[str, str], workers: int, expected: int, *options: str, name: str = "", source: Path = INPUT
) -> Result:
    """`submit --wait` from launch to report, as a user runs it; checked. Plan/enqueue times come from the job."""
    from k2jobs.store.ledger import Ledger, connect

    timeout = max(900.0, expected / 200)
    settle()
    started = time.perf_counter()
    submit = ("submit", str(source), "--wait", "--json", "--again", *options)
    report = json.loads(k2(env, *submit, timeout=timeout, ok=(0, 1)))
    seconds = time.perf_counter() - started
    job_id, totals = report["job_id"], report["totals"]
    if report["status"] != "succeeded" or totals["published"] != expected or totals["rejected"]:
        raise BenchError(
            f"job {job_id} with {workers} worker(s): {report['status']}, totals {totals}, "
            f"expected {expected} published; failures {report['failures'][:3]}"
        )
    meta = Ledger(connect(env["K2_REDIS_URL"])).job_meta(job_id)
    memory = worker_memory(env)
    extra = {
        "job_id": job_id,
        "plan_s": float(meta["plan_s"]),
        "enqueue_s": float(meta["enqueue_s"]),
        "report_duration_s": report["duration_s"],
        "worker_processes": memory,
    }
    name = name or f"k2jobs, {workers} worker{'s' if workers > 1 else ''}{''.join(', ' + o for o in options)}"
    return Result(name, totals["published"], seconds, max(p["peak_mb"] for p in memory), extra)


def run_all(args: argparse.Namespace, env: dict[str, str], rows: int) -> tuple[list[Result], dict[str, Any]]:
    """Every measurement against one broker; only the workers are restarted between the k2jobs runs."""
    from k2jobs.config import load_settings

    settings = load_settings(env)
    info: dict[str, Any] = {"stack_up_s": {}, "stack_broker_warm_up": []}
    # A fresh stack (`stack up` warms the broker it starts: K2_BROKER_WARM_UP_S), then at once the first job; as
    # many fresh stacks as rounds: one job per stack is all this measurement can take from it.
    after_stack_up = []
    for round_ in range(1, args.repeat + 1):
        info["stack_up_s"][f"1, round {round_}"] = round(restart_stack(env, 1), 1)
        info["stack_broker_warm_up"].append(stack_warm_up(env))
        warmed = info["stack_broker_warm_up"][-1]
        print(f"k2jobs with 1 worker, round {round_}/{args.repeat}: the first job after `stack up` (warm-up: {warmed})")
        after_stack_up.append(k2jobs_load(env, 1, 2 * rows, name=FIRST_AFTER_STACK_UP))
    results = [median_run(after_stack_up)]
    ensure_topics(settings.kafka_bootstrap, settings.partitions)
    if args.broker_warm_jobs:
        print(f"broker warm-up: {args.broker_warm_jobs} untimed k2jobs loads, JSON and Avro in turn ...")
        info["broker_warm_up"] = warm_broker(env, args.broker_warm_jobs)
    info["message_bytes"] = info["json_message_bytes"] = write_payloads(WORK / "payloads.jsonl")
    info["avro_message_bytes"] = avro_message_bytes()
    if not args.skip_java:
        print(f"java ceiling: {2 * rows:,} records from real k2jobs messages (~{info['message_bytes']} bytes)")
        results.append(java_ceiling(settings.kafka_bootstrap, 2 * rows, WORK / "payloads.jsonl"))
    print(f"python ceiling (best of {CEILING_RUNS}) ...")
    # A ceiling is the best the producer can do: the first run on a cold broker is often much slower.
    runs = [python_ceiling(settings.kafka_bootstrap) for _ in range(CEILING_RUNS)]
    results.append(max(runs, key=lambda r: r.rate))
    print("naive loader ...")
    results.append(naive_loader(settings.kafka_bootstrap))
    print(f"k2jobs with 1 worker, {args.repeat} run(s) ...")
    warm_up(env)
    results.append(median_run([k2jobs_load(env, 1, 2 * rows) for _ in range(args.repeat)]))
    # Measurements compared with each other are interleaved, so a machine that slows down or warms up in the middle
    # slows or speeds them alike, and each is the median of its runs.
    first, ordered, unordered = [], [], []
    for round_ in range(1, args.repeat + 1):
        info["stack_up_s"][f"2, round {round_}"] = round(restart_workers(env, 2), 1)
        print(
            f"k2jobs with 2 workers, round {round_}/{args.repeat}: the first job after they start, ordered, --unordered"
        )
        first.append(k2jobs_load(env, 2, 2 * rows, name=FIRST_JOB))
        ordered.append(k2jobs_load(env, 2, 2 * rows))
        unordered.append(k2jobs_load(env, 2, 2 * rows, "--unordered"))
    results += [median_run(first), median_run(ordered), median_run(unordered)]
    # Avro and JSON in turn on the same workers, warmed in both formats (the broker too: warm_broker).
    info["stack_up_s"]["avro and json, 2"] = round(restart_workers(env, 2), 1)
    warm_up(env, "avro")
    warm_up(env, "json")
    avro, json_again = [], []
    for round_ in range(1, args.repeat + 1):
        print(
            f"k2jobs Avro then JSON with 2 workers, round {round_}/{args.repeat} (~{info['avro_message_bytes']} "
            f"and ~{info['json_message_bytes']} bytes a value) ..."
        )
        avro.append(k2jobs_load(env, 2, 2 * rows, "--format", "avro", name="k2jobs Avro, 2 workers"))
        json_again.append(k2jobs_load(env, 2, 2 * rows, "--format", "json", name="k2jobs, 2 workers, again"))
    results += [median_run(avro), median_run(json_again)]
    print("naive Avro loader (AvroSerializer) ...")
    results.append(naive_avro_loader(settings.kafka_bootstrap, settings.schema_registry_url))
    return results, info


def median_run(runs: list[Result]) -> Result:
    """The run with the median seconds (the slower middle one of an even number), with every run's seconds and the
    highest worker memory of them all."""
    middle = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
    peaks = [r.rss_mb for r in runs if r.rss_mb is not None]
    extra = {**middle.extra, "runs_s": [round(r.seconds, 3) for r in runs]}
    return Result(middle.name, middle.rows, middle.seconds, max(peaks) if peaks else None, extra)


# -- report --------------------------------------------------------------------------------------
def find(results: list[Result], prefix: str) -> Result | None:
    return next((r for r in results if r.name.startswith(prefix)), None)


def table(results: list[Result]) -> str:
    """The results as a Markdown table."""
    naive, ceiling = find(results, "naive"), find(results, "raw CSV")
    lines = [
        "| measurement | rows | seconds | rows/s | vs naive | vs python ceiling | peak worker RSS MB | runs (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        vs_naive = f"{r.rate / naive.rate:.2f}x" if naive else "-"
        vs_ceiling = f"{r.rate / ceiling.rate:.2f}x" if ceiling else "-"
        rss = f"{r.rss_mb:.0f}" if r.rss_mb is not None else "-"
        runs = ", ".join(f"{s:.2f}" for s in r.extra.get("runs_s", [])) or "-"
        lines.append(
            f"| {r.name} | {r.rows:,} | {r.seconds:.1f} | {r.rate:,.0f} | {vs_naive} | {vs_ceiling} | {rss} | {runs} |"
        )
    return "\n".join(lines) + "\n"


def targets(results: list[Result]) -> dict[str, dict[str, Any]]:
    """The goals for k2jobs with 2 workers, each with its measured value and whether it is met."""
    best, naive, ceiling = find(results, "k2jobs, 2"), find(results, "naive"), find(results, "raw CSV")
    unordered, first = find(results, "k2jobs, 2 workers, --unordered"), find(results, FIRST_JOB)
    after_stack_up, one_worker = find(results, FIRST_AFTER_STACK_UP), find(results, "k2jobs, 1 worker")
    avro, json_again = find(results, "k2jobs Avro, 2"), find(results, "k2jobs, 2 workers, again")
    naive_avro = find(results, "naive Avro")
    assert best and naive and ceiling and unordered and first and avro and json_again and after_stack_up and one_worker
    assert naive_avro
    peak = max(r.rss_mb for r in results if r.rss_mb is not None)
    values = {
        "vs_naive": best.rate / naive.rate,
        "vs_python_ceiling": best.rate / ceiling.rate,
        "rss_mb": peak,
        "ordered_vs_unordered": best.rate / unordered.rate,
        "first_job": first.rate / best.rate,
        "first_job_after_stack_up": after_stack_up.rate / one_worker.rate,
        "avro_vs_json": avro.rate / json_again.rate,
        "avro_vs_naive_avro": avro.rate / naive_avro.rate,
    }
    return {
        name: {
            "value": round(value, 2),
            "target": TARGETS[name],
            "met": value < TARGETS[name] if name == "rss_mb" else value >= TARGETS[name],
        }
        for name, value in values.items()
    }


def target_lines(goals: dict[str, dict[str, Any]]) -> list[str]:
    text = {
        "vs_naive": "k2jobs 2 workers >= {t}x naive",
        "rss_mb": "peak worker RSS < {t:.0f} MB",
        "vs_python_ceiling": "k2jobs 2 workers >= {t}x python produce ceiling",
        "ordered_vs_unordered": "ordered (default) >= {t}x --unordered, 2 workers",
        "first_job": "first job after workers start >= {t}x a later job, 2 workers",
        "first_job_after_stack_up": "first job after `stack up` (a fresh stack) >= {t}x a later job, 1 worker",
        "avro_vs_json": "k2jobs Avro 2 workers >= {t}x k2jobs JSON 2 workers, run in turn with it (medians)",
        "avro_vs_naive_avro": "k2jobs Avro 2 workers >= {t}x a naive loader using AvroSerializer",
    }
    return [
        f"- [{'x' if g['met'] else ' '}] {text[name].format(t=g['target'])}: {g['value']}" for name, g in goals.items()
    ]


def write_results(name: str, rows: int, results: list[Result], info: dict[str, Any]) -> str:
    """Markdown and JSON under bench/results; returns the Markdown."""
    goals = targets(results)
    nproc, date = len(os.sched_getaffinity(0)), datetime.now().astimezone().isoformat(timespec="seconds")
    enqueue = ", ".join(
        f"{r.name}: plan {r.extra['plan_s']:.2f} s + enqueue {r.extra['enqueue_s']:.2f} s"
        for r in results
        if "plan_s" in r.extra
    )
    md = [
        f"# k2jobs benchmark ({date}, nproc {nproc})\n",
        f"Input: {rows:,} trade + {rows:,} quote rows. Mean value size: JSON {info['message_bytes']} bytes, "
        f"Avro {info['avro_message_bytes']} bytes.\n",
        table(results),
        f"Inside `submit`: {enqueue}.\n",
        "Targets:\n",
        *target_lines(goals),
        "",
    ]
    text = "\n".join(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    payload = {
        "date": date,
        "nproc": nproc,
        "rows_per_kind": rows,
        "python": sys.version.split()[0],
        **info,
        "results": [{**r.__dict__, "rows_per_s": round(r.rate)} for r in results],
        "targets": goals,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return text


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="trade rows (and as many quote rows)")
    parser.add_argument("--smoke", action="store_true", help=f"tiny run ({SMOKE_ROWS:,} rows) to results/smoke.*")
    parser.add_argument("--skip-java", action="store_true", help="skip Kafka's Java ProducerPerformance")
    parser.add_argument("--keep-stack", action="store_true", help="leave the bench stack running at the end")
    parser.add_argument("--check", action="store_true", help="exit 1 unless every target is met (acceptance check)")
    parser.add_argument(
        "--broker-warm-jobs",
        type=int,
        help="untimed k2jobs loads, JSON and Avro in turn, that warm the broker's JIT before any measurement "
        f"(default {BROKER_WARM_JOBS}, 2 with --smoke; 0: none, as before 2026-12-01)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help=f"runs of each k2jobs measurement with 2 workers, interleaved; the median counts (default {REPEAT}, "
        "1 with --smoke)",
    )
    args = parser.parse_args(argv)
    if args.rows <= 0:
        parser.error("--rows must be positive")
    if args.repeat is None:
        args.repeat = 1 if args.smoke else REPEAT
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    if args.broker_warm_jobs is None:
        args.broker_warm_jobs = 2 if args.smoke else BROKER_WARM_JOBS
    if args.broker_warm_jobs < 0:
        parser.error("--broker-warm-jobs must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = SMOKE_ROWS if args.smoke else args.rows
    env = bench_env()
    WORK.mkdir(parents=True, exist_ok=True)
    build_input(rows)
    try:
        results, info = run_all(args, env, rows)
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep_stack:
            stop_stack(env)
    print()
    print(write_results("smoke" if args.smoke else "latest", rows, results, info))
    return exit_status("bench", targets(results), args.check)


def exit_status(who: str, goals: dict[str, dict[str, Any]], check: bool) -> int:
    """1 when checking and a target is missed (named on stderr), else 0."""
    missed = [name for name, goal in goals.items() if not goal["met"]]
    if check and missed:
        print(f"{who}: targets missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
