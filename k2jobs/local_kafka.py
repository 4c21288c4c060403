"""Apache Kafka from Maven Central: its jars, cached once, and a single-node KRaft configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from .errors import StackError
from .processes import need_program

KAFKA_VERSION = "4.4.0"
KAFKA_CACHE = Path(os.environ.get("K2_KAFKA_LIBS") or Path.home() / ".cache" / "k2jobs" / f"kafka-{KAFKA_VERSION}")


def write_server_properties(stack_dir: Path, host: str, port: int, ctrl: int, partitions: int) -> Path:
    """Single-node KRaft (combined broker and controller) properties; storage formatted once."""
    data = stack_dir / "kafka" / "data"
    data.mkdir(parents=True, exist_ok=True)
    props = stack_dir / "kafka" / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers={host}:{ctrl}",
                f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctrl}",
                f"advertised.listeners=PLAINTEXT://{host}:{port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={data}",
                f"num.partitions={partitions}",
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
    if not (data / "meta.properties").exists():
        format_storage(props)
    return props


def format_storage(props: Path) -> None:
    """Give the broker's log directory a new cluster id (kafka.tools.StorageTool)."""
    cp = f"{kafka_libs()}/*"
    cluster = (
        subprocess.run(
            ["java", "-cp", cp, "kafka.tools.StorageTool", "random-uuid"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    done = subprocess.run(
        ["java", "-cp", cp, "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(props), "--standalone"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise StackError(f"formatting Kafka storage failed: {done.stderr.strip() or done.stdout.strip()}")


def kafka_libs() -> Path:
    """The Kafka broker and tools jars, resolved from Maven Central once and cached."""
    if (KAFKA_CACHE / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return KAFKA_CACHE
    pom = resources.files("k2jobs") / "resources" / "kafka-pom.xml"
    staging = KAFKA_CACHE.with_name(KAFKA_CACHE.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    done = subprocess.run(
        [
            need_program("mvn"),
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise StackError(f"resolving Kafka {KAFKA_VERSION} from Maven Central failed:\n{done.stdout[-2000:]}")
    staging.rename(KAFKA_CACHE)
    return KAFKA_CACHE
