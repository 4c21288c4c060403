"""Can a single-node KRaft Kafka broker killed with SIGKILL right after a commit leave a hanging transaction?

Starts one combined broker+controller (Kafka 4.4.0 jars from ~/.cache/k2jobs, properties as in
k2jobs/local_kafka.py for a single node: replication 1, min ISR 1), then per try:

1. creates topic `hang-NNN` (3 partitions; a topic per try keeps each try's evidence apart),
2. a transactional producer (`transactional.id` hang-tx-NNN, transaction.timeout.ms 60000) sends
   --messages records spread over the 3 partitions in one transaction and commits,
3. DELAY ms after commit_transaction() returns (cycled from --delays) the broker gets SIGKILL,
4. while it is down, the tail of each partition's log file is parsed: is there a COMMIT control batch yet?
5. the broker is restarted; once it serves, high watermark (read_uncommitted) and LSO (read_committed
   `get_watermark_offsets`) of each partition are sampled until they are equal or --wait seconds pass;
   a partition still short of its HW is checked again --hang-wait seconds after the restart (past the
   60 s transaction timeout) and then counts as hanging,
6. `kafka-transactions.sh find-hanging --broker-id 1` (TransactionsCommand) runs; for stuck partitions also
   `find-hanging --max-transaction-timeout 1` and `describe-producers`.

Hanging transactions are left in place until all tries are done; then (unless --no-abort) each is ended with
`kafka-transactions.sh abort --start-offset`, and the script reports what read_committed consumers see.

The broker log (with kafka.coordinator.transaction at DEBUG and state.change.logger at INFO) is
WORKDIR/server.log; lines "===== hanging_txn ..." mark each kill and restart.

    .venv/bin/python bench/hanging_txn.py --tries 40 --workdir /tmp/hanging/run --port 29192
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

KAFKA_LIBS = Path(os.environ.get("K2_KAFKA_LIBS") or Path.home() / ".cache" / "k2jobs" / "kafka-4.4.0")
CLASSPATH = f"{KAFKA_LIBS}/*"
PARTITIONS = 3

BROKER_LOG4J = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = info
logger.txn.name = kafka.coordinator.transaction
logger.txn.level = debug
logger.state.name = state.change.logger
logger.state.level = info
logger.request.name = kafka.request.logger
logger.request.level = warn
"""

TOOLS_LOG4J = """\
status = error
appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = STDERR
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Broker:
    def __init__(self, workdir: Path, port: int, controller_port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.controller_port = controller_port
        self.bootstrap = f"127.0.0.1:{port}"
        self.data = workdir / "data"
        self.props = workdir / "server.properties"
        self.log_path = workdir / "server.log"
        self.log4j = workdir / "log4j2.properties"
        self.tools_log4j = workdir / "tools-log4j2.properties"
        self.proc: subprocess.Popen | None = None

    def setup(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.log4j.write_text(BROKER_LOG4J)
        self.tools_log4j.write_text(TOOLS_LOG4J)
        self.props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.data}",
                    f"num.partitions={PARTITIONS}",
                    "min.insync.replicas=1",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=4",
                    "offsets.topic.num.partitions=4",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "",
                ]
            )
        )
        if not (self.data / "meta.properties").exists():
            uuid = (
                subprocess.run(
                    ["java", "-cp", CLASSPATH, "kafka.tools.StorageTool", "random-uuid"],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            subprocess.run(
                [
                    "java",
                    "-cp",
                    CLASSPATH,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    uuid,
                    "-c",
                    str(self.props),
                    "--standalone",
                ],
                capture_output=True,
                text=True,
                check=True,
            )

    def mark(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(f"===== hanging_txn {time.strftime('%Y-%m-%d %H:%M:%S')} {text} =====\n")

    def start(self) -> float:
        out = open(self.log_path, "a")  # noqa: SIM115 - the broker's stdout for its whole life
        self.proc = subprocess.Popen(
            [
                "java",
                "-Xms512m",
                "-Xmx1g",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.log4j}",
                "-cp",
                CLASSPATH,
                "kafka.Kafka",
                str(self.props),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        (self.workdir / "broker.pid").write_text(str(self.proc.pid))
        return time.monotonic()

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def wait_ready(self, topics: list[str], timeout: float = 180) -> None:
        """Broker 1 is listed and every partition of `topics` (and __transaction_state) has leader 1."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}; see {self.log_path}")
            try:
                md = self.admin().list_topics(timeout=2)
                if 1 in md.brokers and all(
                    t in md.topics
                    and md.topics[t].error is None
                    and md.topics[t].partitions
                    and all(p.leader == 1 and p.error is None for p in md.topics[t].partitions.values())
                    for t in topics
                ):
                    return
            except Exception:  # noqa: BLE001 - not yet
                pass
            time.sleep(0.25)
        raise RuntimeError("broker not ready in time")

    def tool(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            ["java", "-Xmx256m", f"-Dlog4j2.configurationFile={self.tools_log4j}", "-cp", CLASSPATH, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        text = done.stdout.rstrip()
        if done.returncode != 0 or done.stderr.strip():
            text += f"\n[exit {done.returncode}] {done.stderr.strip()[-1500:]}"
        return text

    def transactions(self, *args: str) -> str:
        return self.tool("org.apache.kafka.tools.TransactionsCommand", "--bootstrap-server", self.bootstrap, *args)


def consumer(bootstrap: str, committed: bool) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "hanging-txn-check",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed else "read_uncommitted",
            "log_level": 0,
        }
    )


def offsets(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    """partition -> (high watermark, last stable offset)."""
    plain, committed = consumer(bootstrap, False), consumer(bootstrap, True)
    try:
        result = {}
        for p in range(PARTITIONS):
            for _attempt in range(20):
                try:
                    hw = plain.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)[1]
                    lso = committed.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)[1]
                    result[p] = (hw, lso)
                    break
                except KafkaException:
                    time.sleep(0.5)
            else:
                raise RuntimeError(f"no offsets for {topic}-{p}")
        return result
    finally:
        plain.close()
        committed.close()


def count_committed(bootstrap: str, topic: str, partition: int, lso: int) -> int:
    """Records a read_committed consumer gets from offset 0 up to the LSO."""
    c = consumer(bootstrap, True)
    try:
        c.assign([TopicPartition(topic, partition, 0)])
        n, idle = 0, time.monotonic()
        while time.monotonic() - idle < 5:
            msgs = c.consume(500, timeout=0.5)
            real = [m for m in msgs if m.error() is None]
            if real:
                n += len(real)
                idle = time.monotonic()
            pos = c.position([TopicPartition(topic, partition)])[0].offset
            if pos >= lso and not msgs:
                break
        return n
    finally:
        c.close()


def varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), i
        shift += 7


def log_tail(partition_dir: Path) -> list[str]:
    """Batches of a partition's last log segment as read from disk: DATA(n)/COMMIT/ABORT per batch."""
    segments = sorted(partition_dir.glob("*.log"))
    if not segments:
        return ["<no segment>"]
    buf = segments[-1].read_bytes()
    out, i = [], 0
    while i + 61 <= len(buf):
        base_offset, length = struct.unpack_from(">qi", buf, i)
        if length <= 0 or i + 12 + length > len(buf):
            out.append(f"<torn {len(buf) - i}B>")
            break
        attrs = struct.unpack_from(">h", buf, i + 21)[0]
        count = struct.unpack_from(">i", buf, i + 57)[0]
        if attrs & 0x20:  # control batch: one record, key = version(int16) type(int16)
            j = i + 61
            _, j = varint(buf, j)  # record length
            j += 1  # attributes
            _, j = varint(buf, j)  # timestamp delta
            _, j = varint(buf, j)  # offset delta
            _, j = varint(buf, j)  # key length
            ctype = struct.unpack_from(">h", buf, j + 2)[0]
            out.append(f"{'COMMIT' if ctype == 1 else 'ABORT' if ctype == 0 else f'CTRL{ctype}'}@{base_offset}")
        else:
            out.append(f"data@{base_offset}x{count}{'(txn)' if attrs & 0x10 else ''}")
        i += 12 + length
    return out


def compress(tail: list[str]) -> str:
    """Data batches summarised, control batches kept."""
    parts, data = [], 0
    for t in tail:
        if t.startswith("data@"):
            data += int(t.split("x")[1].split("(")[0])
        else:
            if data:
                parts.append(f"{data} data recs")
                data = 0
            parts.append(t)
    if data:
        parts.append(f"{data} data recs")
    return ", ".join(parts) or "<empty>"


def describe_start_offset(text: str) -> int | None:
    """CurrentTransactionStartOffset of the one open transaction in describe-producers output."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or "CurrentTransactionStartOffset" not in lines[0]:
        return None
    col = lines[0].index("CurrentTransactionStartOffset")
    for row in lines[1:]:
        if len(row) > col and row[col].lstrip("-").isdigit():
            return int(row[col])
    return None


def run_try(n: int, delay_ms: float, broker: Broker, args: argparse.Namespace, record: dict) -> None:
    topic = f"hang-{n:03d}"
    record.update(topic=topic, delay_ms=delay_ms)
    admin = broker.admin()
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    broker.wait_ready([topic])

    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "transactional.id": f"hang-tx-{n:03d}",
            "transaction.timeout.ms": 60000,
            "linger.ms": 5,
            "log_level": 0,
        }
    )
    producer.init_transactions(60)
    producer.begin_transaction()
    for i in range(args.messages):
        producer.produce(topic, value=f"try={n} i={i}".encode(), partition=i % PARTITIONS)
    t0 = time.perf_counter()
    producer.commit_transaction(60)
    t1 = time.perf_counter()
    if delay_ms > 0:
        until = t1 + delay_ms / 1000
        while time.perf_counter() < until:
            pass
    t2 = time.perf_counter()
    os.kill(broker.proc.pid, signal.SIGKILL)
    broker.proc.wait()
    record["commit_ms"] = round((t1 - t0) * 1000, 1)
    record["kill_after_commit_ms"] = round((t2 - t1) * 1000, 2)
    broker.mark(
        f"try {n} topic {topic} txn hang-tx-{n:03d}: SIGKILL {record['kill_after_commit_ms']} ms after commit returned"
    )

    tails = {p: log_tail(broker.data / f"{topic}-{p}") for p in range(PARTITIONS)}
    record["on_disk_at_kill"] = {p: compress(t) for p, t in tails.items()}
    record["marker_missing_at_kill"] = [p for p, t in tails.items() if not any(x.startswith("COMMIT") for x in t)]

    broker.mark(f"try {n}: restart")
    log_from = broker.log_path.stat().st_size
    started = broker.start()
    broker.wait_ready([topic, "__transaction_state"])
    record["ready_s"] = round(time.monotonic() - started, 1)
    del producer

    first = offsets(broker.bootstrap, topic)
    record["at_ready"] = {p: {"hw": hw, "lso": lso} for p, (hw, lso) in first.items()}
    current = first
    while any(lso < hw for hw, lso in current.values()) and time.monotonic() - started < record["ready_s"] + args.wait:
        time.sleep(2)
        current = offsets(broker.bootstrap, topic)
    stuck = [p for p, (hw, lso) in current.items() if lso < hw]
    record["resolved_after_s"] = None if stuck else round(time.monotonic() - started, 1)
    if stuck:
        remaining = started + args.hang_wait - time.monotonic()
        log(f"try {n}: partitions {stuck} LSO < HW after {args.wait}s; waiting {max(0, remaining):.0f}s more")
        if remaining > 0:
            time.sleep(remaining)
        current = offsets(broker.bootstrap, topic)
        stuck = [p for p, (hw, lso) in current.items() if lso < hw]
        record["checked_after_s"] = round(time.monotonic() - started, 1)
    record["final"] = {p: {"hw": hw, "lso": lso} for p, (hw, lso) in current.items()}
    record["hanging_partitions"] = stuck
    if not stuck:
        record["committed_counts"] = {
            p: count_committed(broker.bootstrap, topic, p, lso) for p, (hw, lso) in current.items()
        }
    record["find_hanging"] = broker.transactions("find-hanging", "--broker-id", "1")
    if stuck:
        record["find_hanging_1min"] = broker.transactions(
            "find-hanging", "--broker-id", "1", "--max-transaction-timeout", "1"
        )
        record["describe_producers"] = {
            p: broker.transactions("describe-producers", "--topic", topic, "--partition", str(p))
            for p in range(PARTITIONS)
        }
    broker.mark(f"try {n}: checked, hanging partitions {stuck}")
    record["log_events"] = scan_log(broker, log_from, f"hang-tx-{n:03d}", n)


EVENTS = {
    "no_leader_markers_skipped": "Couldn't find leader endpoint",
    "markers_sent_after_load": "Sending txn markers for",
    "complete_append_failed": "failed due to org.apache.kafka.common.errors.NotLeaderOrFollowerException",
    "complete_commit_written": "txnState=COMPLETE_COMMIT, topicPartitions=[], txnStartTimestamp",
    "marker_response": "Received WriteTxnMarker response",
}


def scan_log(broker: Broker, offset: int, txn_id: str, n: int) -> dict[str, int]:
    """Counts of the coordinator's key log lines about `txn_id` since the restart; the lines go to tries/NNN.log."""
    with open(broker.log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    keep = (
        "Fencing broker",
        "handleBroker",
        "Registering a new incarnation",
        "Kafka Server started",
        "Elected as the txn coordinator",
        "Resigned as the txn coordinator",
        "DuplicateBrokerRegistration",
    )
    lines = [ln for ln in text.splitlines() if (txn_id in ln or any(k in ln for k in keep))]
    (broker.workdir / "tries").mkdir(exist_ok=True)
    (broker.workdir / "tries" / f"{n:03d}.log").write_text("\n".join(ln[:1500] for ln in lines) + "\n")
    counts = {name: sum(1 for ln in lines if txn_id in ln and pat in ln) for name, pat in EVENTS.items()}
    counts["complete_commit_written"] = sum(
        1 for ln in lines if txn_id in ln and "Updating" in ln and "COMPLETE_COMMIT" in ln and "succeeded" in ln
    )
    return counts


def finish_hangs(broker: Broker, records: list[dict], args: argparse.Namespace) -> None:
    hangs = [r for r in records if r.get("hanging_partitions")]
    if not hangs:
        return
    log(
        "find-hanging --broker-id 1 (default 15 min) at the end:\n"
        + broker.transactions("find-hanging", "--broker-id", "1")
    )
    if args.no_abort:
        return
    for r in hangs:
        topic = r["topic"]
        r["abort"] = {}
        for p in r["hanging_partitions"]:
            described = broker.transactions("describe-producers", "--topic", topic, "--partition", str(p))
            start = describe_start_offset(described)
            if start is None:
                r["abort"][p] = {"error": "no open transaction in describe-producers", "describe": described}
                continue
            out = broker.transactions("abort", "--topic", topic, "--partition", str(p), "--start-offset", str(start))
            time.sleep(2)
            after = offsets(broker.bootstrap, topic)
            r["abort"][p] = {
                "start_offset": start,
                "output": out,
                "after": {q: {"hw": hw, "lso": lso} for q, (hw, lso) in after.items()},
                "describe_after": broker.transactions("describe-producers", "--topic", topic, "--partition", str(p)),
            }
        after = offsets(broker.bootstrap, topic)
        r["committed_counts_after_abort"] = {
            q: count_committed(broker.bootstrap, topic, q, lso) for q, (hw, lso) in after.items()
        }
        log(
            f"{topic}: abort results {json.dumps(r['abort'], indent=1)}\n"
            f"read_committed counts per partition after abort: {r['committed_counts_after_abort']}"
        )
    log(
        "find-hanging --broker-id 1 --max-transaction-timeout 1 after aborts:\n"
        + broker.transactions("find-hanging", "--broker-id", "1", "--max-transaction-timeout", "1")
    )


def summary_line(r: dict) -> str:
    if "error" in r:
        return f"try {r['try']:3d} delay {r.get('delay_ms')}ms: ERROR {r['error']}"
    fh = r["find_hanging"].strip().splitlines()
    return (
        f"try {r['try']:3d} delay {r['delay_ms']}ms (kill {r['kill_after_commit_ms']}ms after commit, commit took "
        f"{r['commit_ms']}ms) | no COMMIT on disk at kill: {r['marker_missing_at_kill']} | "
        f"ready {r['ready_s']}s | at ready LSO<HW: {[p for p, v in r['at_ready'].items() if v['lso'] < v['hw']]} | "
        f"resolved after {r['resolved_after_s']}s | HANGING: {r['hanging_partitions']} | log {r['log_events']} | "
        f"find-hanging: {len(fh) - 1 if fh and fh[0].startswith('Topic') else fh} rows"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hanging/run"))
    ap.add_argument("--port", type=int, default=29192, help="client port; the controller uses port+1")
    ap.add_argument("--delays", default="0,1,2,5", help="ms between commit_transaction() returning and SIGKILL, cycled")
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--wait", type=float, default=30, help="seconds after readiness to wait for LSO == HW")
    ap.add_argument(
        "--hang-wait", type=float, default=75, help="seconds after restart for the final check of a stuck partition"
    )
    ap.add_argument(
        "--max-minutes", type=float, default=0, help="start no new try after this many minutes (0: no limit)"
    )
    ap.add_argument("--no-abort", action="store_true", help="leave hanging transactions open at the end")
    ap.add_argument("--keep-running", action="store_true", help="do not stop the broker at the end")
    args = ap.parse_args()

    delays = [float(d) for d in args.delays.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(args.workdir, args.port, args.port + 1)
    broker.setup()
    broker.mark("first start")
    broker.start()
    records: list[dict] = []
    began = time.monotonic()
    results = args.workdir / "results.jsonl"
    try:
        broker.wait_ready([])
        log(f"broker up on {broker.bootstrap}, log {broker.log_path}")
        for n in range(1, args.tries + 1):
            if args.max_minutes and time.monotonic() - began > args.max_minutes * 60:
                log(f"time budget reached after {n - 1} tries")
                break
            record: dict = {"try": n}
            try:
                run_try(n, delays[(n - 1) % len(delays)], broker, args, record)
            except Exception as e:  # noqa: BLE001 - record and go on with a running broker
                record["error"] = repr(e)
                if broker.proc is None or broker.proc.poll() is not None:
                    broker.mark(f"try {n}: restart after error")
                    broker.start()
                broker.wait_ready([])
            records.append(record)
            with open(results, "a") as f:
                f.write(json.dumps(record) + "\n")
            log(summary_line(record))
            if record.get("hanging_partitions"):
                log(
                    f"try {n} on disk at kill: {record['on_disk_at_kill']}\nfinal: {record['final']}\n"
                    f"find-hanging (default):\n{record['find_hanging']}\n"
                    f"find-hanging --max-transaction-timeout 1:\n{record['find_hanging_1min']}\n"
                    + "\n".join(
                        f"describe-producers {record['topic']} {p}:\n{t}"
                        for p, t in record["describe_producers"].items()
                    )
                )
        finish_hangs(broker, records, args)
        with open(args.workdir / "results-final.json", "w") as f:
            json.dump(records, f, indent=1)
    finally:
        if not args.keep_running:
            broker.mark("stop (SIGTERM)")
            broker.stop()

    done = [r for r in records if "error" not in r]
    hung = [r for r in done if r["hanging_partitions"]]
    window = [r for r in done if r["marker_missing_at_kill"]]
    print("\nSUMMARY")
    print(
        f"tries: {len(records)} ({len(records) - len(done)} errors); "
        f"kill before a COMMIT marker was on disk in at least one partition: {len(window)}; "
        f"hanging after the wait: {len(hung)}"
    )
    for d in delays:
        ds = [r for r in done if r["delay_ms"] == d]
        print(
            f"  delay {d:g} ms: {len(ds)} tries, {sum(1 for r in ds if r['marker_missing_at_kill'])} killed before all "
            f"markers were on disk, {sum(1 for r in ds if r['hanging_partitions'])} hanging "
            f"({', '.join(r['topic'] + ':' + str(r['hanging_partitions']) for r in ds if r['hanging_partitions'])})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
