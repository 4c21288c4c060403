"""Apache Kafka from Maven Central: its jars, cached once, and KRaft nodes for the local stack (one or a cluster)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from k2jobs.errors import StackError
from k2jobs.stack.processes import need_program
from k2jobs.stack.secrets import Material, java_argfile, kafka_properties, scram_arguments, write_private

KAFKA_VERSION = "4.4.0"
KAFKA_CACHE = Path.home() / ".cache" / "k2jobs" / f"kafka-{KAFKA_VERSION}"  # unless K2_KAFKA_LIBS names another
MAX_REPLICATION = 3


@dataclass(frozen=True)
class KafkaNode:
    """One Kafka process of the local stack: a combined KRaft broker and controller."""

    node_id: int
    name: str  # "kafka" for a single node, "kafka-<id>" in a cluster: its folder, pid file and log
    host: str
    port: int
    controller_port: int
    home: Path

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"


def kafka_nodes(
    stack_dir: Path, host: str, port: int, count: int, controller_port: int | None = None
) -> list[KafkaNode]:
    """The stack's Kafka nodes: node i (from 1) listens on `port + 2*(i-1)`, its controller on the port after.

    A single node keeps the folder `kafka/` (and may have its controller port set apart); a cluster uses `kafka-<i>/`.
    """
    if count == 1:
        return [KafkaNode(1, "kafka", host, port, controller_port or port + 1, stack_dir / "kafka")]
    return [
        KafkaNode(i, f"kafka-{i}", host, port + 2 * (i - 1), port + 2 * (i - 1) + 1, stack_dir / f"kafka-{i}")
        for i in range(1, count + 1)
    ]


def internal_replication(nodes: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of `nodes`: (1, 1), (2, 1), (3, 2) from three on."""
    factor = min(MAX_REPLICATION, nodes)
    return factor, 2 if factor >= MAX_REPLICATION else 1


def write_server_properties(
    node: KafkaNode, nodes: list[KafkaNode], partitions: int, secure: Material | None = None
) -> Path:
    """A node's KRaft properties (internal topics replicated across the cluster); storage formatted once.

    `secure`: SASL_SSL everywhere and ACLs (security.kafka_properties); the file then holds the admin's password,
    so it is made readable by its owner only.
    """
    data = node.home / "data"
    data.mkdir(parents=True, exist_ok=True)
    listener = "SASL_SSL" if secure else "PLAINTEXT"
    factor, min_isr = internal_replication(len(nodes))
    if len(nodes) == 1:
        quorum = f"controller.quorum.bootstrap.servers={node.host}:{node.controller_port}"
    else:
        quorum = "controller.quorum.voters=" + ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in nodes)
    node.properties.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={node.node_id}",
                quorum,
                f"listeners={listener}://{node.host}:{node.port},CONTROLLER://{node.host}:{node.controller_port}",
                f"advertised.listeners={listener}://{node.host}:{node.port}",
                "controller.listener.names=CONTROLLER",
                *(
                    kafka_properties(secure)
                    if secure
                    else [
                        "inter.broker.listener.name=PLAINTEXT",
                        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    ]
                ),
                f"log.dirs={data}",
                f"num.partitions={partitions}",
                f"min.insync.replicas={min_isr}",  # the default of topics created without it (__consumer_offsets)
                f"offsets.topic.replication.factor={factor}",
                f"transaction.state.log.replication.factor={factor}",
                f"transaction.state.log.min.isr={min_isr}",
                "transaction.state.log.num.partitions=4",
                "offsets.topic.num.partitions=4",
                f"share.coordinator.state.topic.replication.factor={factor}",
                f"share.coordinator.state.topic.min.isr={min_isr}",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "",
            ]
        )
    )
    node.properties.chmod(0o600)
    if not (data / "meta.properties").exists():
        cluster = cluster_id(node.home.parent, len(nodes))
        format_storage(
            node.properties, cluster, standalone=len(nodes) == 1, scram=scram_arguments(secure) if secure else []
        )
    return node.properties


def cluster_id(stack_dir: Path, nodes: int) -> str:
    """A new cluster id for a single node; for a cluster, one id kept in the stack folder for all its nodes."""
    if nodes == 1:
        return _random_uuid()
    path = stack_dir / "kafka-cluster.id"
    if not path.exists():
        path.write_text(_random_uuid())
    return path.read_text().strip()


def _random_uuid() -> str:
    done = subprocess.run(
        ["java", "-cp", f"{kafka_libs()}/*", "kafka.tools.StorageTool", "random-uuid"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def format_storage(props: Path, cluster: str, standalone: bool, scram: list[str]) -> None:
    """Give a node's log directory its cluster id (kafka.tools.StorageTool); a cluster's voters are in `props`.

    `scram`: --add-scram arguments, which hold passwords: they go to java in an @argfile (readable by its owner
    only, deleted afterwards), never on a command line; the tool's output (salts and keys) is never shown.
    """
    arguments = ["-cp", f"{kafka_libs()}/*", "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(props)]
    arguments += (["--standalone"] if standalone else []) + scram
    argfile = props.with_name("format.args")
    write_private(argfile, java_argfile(arguments))
    try:
        done = subprocess.run(["java", f"@{argfile}"], capture_output=True, text=True)
    finally:
        argfile.unlink(missing_ok=True)
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
        reason = "\n".join(line for line in lines if "scram" not in line.lower())
        raise StackError(f"formatting Kafka storage failed: {reason}")


def kafka_libs(cache: Path | None = None) -> Path:
    """The Kafka broker and tools jars, resolved from Maven Central once and cached (in `cache`, or KAFKA_CACHE)."""
    cache = cache or KAFKA_CACHE
    if (cache / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return cache
    pom = resources.files("k2jobs") / "resources" / "kafka-pom.xml"
    staging = cache.with_name(cache.name + ".partial")
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
    staging.rename(cache)
    return cache
