"""A local stack without Docker: the real Redis, a real KRaft Kafka broker, Celery workers, Flower."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis

from .config import Settings
from .errors import StackError

KAFKA_VERSION = "4.4.0"
KAFKA_CACHE = Path(os.environ.get("K2_KAFKA_LIBS") or Path.home() / ".cache" / "k2jobs" / f"kafka-{KAFKA_VERSION}")
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Service:
    """One process the stack runs, identified by its pid file."""

    name: str
    command: list[str]
    log: Path
    pidfile: Path
    marker: str  # a string its command line holds, so a recycled pid is not mistaken for it
    ready: Callable[[], bool]
    env: dict[str, str] | None = None

    def pid(self) -> int | None:
        """The pid of the running process, or None if it is not running."""
        try:
            pid = int(self.pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            return None
        if self.marker not in cmdline or _is_zombie(pid):
            return None
        return pid

    def start(self) -> int:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        self.pidfile.write_text(str(proc.pid))
        return proc.pid


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _wait(
    what: str, check: Callable[[], bool], service: Service | None = None, timeout_s: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if service is not None and service.pid() is None:
            raise StackError(f"{what} exited while starting; see {service.log}")
        time.sleep(0.25)
    raise StackError(f"{what} was not ready after {timeout_s:.0f}s")


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host or "127.0.0.1"), int(port or default_port)


class Stack:
    """Starts, inspects and stops the local services in `settings.stack_dir`."""

    def __init__(self, settings: Settings, workers: int = 2) -> None:
        self.settings = settings
        self.dir = settings.stack_dir
        self.workers = workers
        self.redis_url = urlparse(settings.redis_url)
        self.kafka_host, self.kafka_port = _host_port(settings.kafka_bootstrap.split(",")[0], 9092)
        self.controller_port = int(os.environ.get("K2_KAFKA_CONTROLLER_PORT") or self.kafka_port + 1)

    # -- services ---------------------------------------------------------------------------
    def redis_service(self) -> Service:
        port = self.redis_url.port or 6379
        data = self.dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        command = [
            _need("redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
        ]
        if self.redis_url.password:
            command += ["--requirepass", self.redis_url.password]
        return Service(
            "redis",
            command,
            self.dir / "logs" / "redis.log",
            self.dir / "redis.pid",
            f"redis-server 127.0.0.1:{port}",
            self._redis_ready,
        )

    def kafka_service(self) -> Service:
        props = self._kafka_properties()
        log4j = resources.files("k2jobs") / "resources" / "log4j2.properties"
        command = [
            "java",
            "-Xms512m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{kafka_libs()}/*",
            "kafka.Kafka",
            str(props),
        ]
        return Service(
            "kafka", command, self.dir / "logs" / "kafka.log", self.dir / "kafka.pid", str(props), self._kafka_ready
        )

    def worker_service(self, number: int) -> Service:
        name = f"k2w{number}-{self.kafka_port}@%h"
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "k2jobs.app",
            "worker",
            "-Q",
            "k2jobs.chunks,k2jobs.control",
            "-c",
            "1",
            "-n",
            name,
            "-E",
            "--loglevel",
            "INFO",
        ]
        env = {**os.environ, "K2_DATA_ROOT": str(self.settings.data_root)}
        return Service(
            f"worker-{number}",
            command,
            self.dir / "logs" / f"worker-{number}.log",
            self.dir / f"worker-{number}.pid",
            name,
            lambda: True,
            env,
        )

    def flower_service(self) -> Service:
        port = self.settings.flower_port
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "k2jobs.app",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ]
        return Service(
            "flower",
            command,
            self.dir / "logs" / "flower.log",
            self.dir / "flower.pid",
            f"--port={port}",
            self._flower_ready,
        )

    def worker_services(self) -> list[Service]:
        """Workers wanted now, plus any started earlier beyond that number."""
        numbers = set(range(1, self.workers + 1))
        numbers |= {int(p.stem.split("-")[1]) for p in self.dir.glob("worker-*.pid")}
        return [self.worker_service(n) for n in sorted(numbers)]

    # -- readiness --------------------------------------------------------------------------
    def _redis_ready(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def _kafka_ready(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            metadata = AdminClient(self.settings.kafka_config(log_level=0)).list_topics(timeout=2)
            return bool(metadata.brokers)
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False

    def _flower_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.flower_url() + "/healthcheck", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.flower_port}"

    def _kafka_properties(self) -> Path:
        data = self.dir / "kafka" / "data"
        data.mkdir(parents=True, exist_ok=True)
        host, port, ctrl = self.kafka_host, self.kafka_port, self.controller_port
        props = self.dir / "kafka" / "server.properties"
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
                    f"num.partitions={self.settings.partitions}",
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
            self._format_storage(props)
        return props

    def _format_storage(self, props: Path) -> None:
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

    # -- commands ---------------------------------------------------------------------------
    def up(self) -> dict[str, Any]:
        """Start what is not running, in order, and return when everything is ready."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for service in [self.redis_service(), self.kafka_service()]:
            self._ensure(service)
        workers = self.worker_services()
        for worker in workers:
            if worker.pid() is None:
                worker.start()
        self._wait_workers(workers)
        self._ensure(self.flower_service())
        return self.status()

    def _ensure(self, service: Service) -> None:
        if service.pid() is None and not service.ready():
            service.start()
        _wait(service.name, service.ready, service if service.pid() else None)

    def _wait_workers(self, workers: list[Service]) -> None:
        from .app import app

        names = {w.marker.replace("%h", os.uname().nodename) for w in workers}

        def all_answer() -> bool:
            replies = app.control.ping(timeout=1.0)
            return names <= {name for reply in replies for name in reply}

        _wait("celery workers", all_answer)

    def status(self) -> dict[str, Any]:
        """Pids of the running services (None where not running)."""
        flower = self.flower_service()
        return {
            "redis": {"pid": self.redis_service().pid(), "url": self.settings.redis_url},
            "kafka": {"pid": self.kafka_service_pid(), "bootstrap": self.settings.kafka_bootstrap},
            "workers": [{"name": w.name, "pid": w.pid()} for w in self.worker_services() if w.pidfile.exists()],
            "flower": {"pid": flower.pid(), "url": self.flower_url()},
        }

    def kafka_service_pid(self) -> int | None:
        # The Kafka service object writes properties; reading status must not need the jars.
        pidfile = self.dir / "kafka.pid"
        probe = Service(
            "kafka",
            [],
            self.dir / "logs" / "kafka.log",
            pidfile,
            str(self.dir / "kafka" / "server.properties"),
            lambda: True,
        )
        return probe.pid()

    def down(self) -> list[str]:
        """Stop what this stack started, workers first so they finish their chunks."""
        stopped = []
        services = [*self.worker_services(), self.flower_service()]
        for service in services:
            if _stop(service):
                stopped.append(service.name)
        for pidfile, name in ((self.dir / "kafka.pid", "kafka"), (self.dir / "redis.pid", "redis")):
            marker = str(self.dir / "kafka" / "server.properties") if name == "kafka" else "redis-server"
            if _stop(Service(name, [], self.dir, pidfile, marker, lambda: True)):
                stopped.append(name)
        for worker_pid in self.dir.glob("worker-*.pid"):
            worker_pid.unlink(missing_ok=True)
        return stopped


def _stop(service: Service) -> bool:
    pid = service.pid()
    if pid is None:
        service.pidfile.unlink(missing_ok=True)
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and not _is_zombie(pid) and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)
    if Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
        os.killpg(pid, signal.SIGKILL)
    service.pidfile.unlink(missing_ok=True)
    return True


def _need(program: str) -> str:
    path = shutil.which(program) or (f"/usr/bin/{program}" if Path(f"/usr/bin/{program}").exists() else None)
    if path is None:
        raise StackError(f"{program} is not installed (make install puts it there: apt-get install redis-server)")
    return path


def kafka_libs() -> Path:
    """The Kafka broker and tools jars, resolved from Maven Central once and cached."""
    if (KAFKA_CACHE / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return KAFKA_CACHE
    pom = resources.files("k2jobs") / "resources" / "kafka-pom.xml"
    staging = KAFKA_CACHE.with_name(KAFKA_CACHE.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    done = subprocess.run(
        [
            _need("mvn"),
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
