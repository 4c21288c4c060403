"""A local stack without Docker: the real Redis, a real KRaft Kafka broker, Celery workers, Flower."""

from __future__ import annotations

import json
import logging
import os
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any
from urllib.parse import urlparse

import redis

from k2jobs.background import Meanwhile
from k2jobs.config import KAFKA_OPTION_PREFIX, Settings, masked_url, redis_tls
from k2jobs.errors import StackError
from k2jobs.kafka.registry import registry_ready, set_backward_compatibility
from k2jobs.stack.kafka_nodes import KafkaNode, kafka_libs, kafka_nodes, write_server_properties
from k2jobs.stack.processes import Service, need_program, ports_clients_may_take, stop, wait_until_ready
from k2jobs.stack.registry_app import registry_command
from k2jobs.stack.s3_server import s3_client_env, s3_command, s3_server_env, write_client_env
from k2jobs.stack.secrets import (
    FLOWER_USER,
    Material,
    as_kafka_admin,
    ensure_material,
    grant_kafka,
    is_secure,
    redis_conf,
    write_env_file,
    write_private,
)
from k2jobs.worker.command import worker_command, worker_environment

log = logging.getLogger(__name__)
FLOWER_STOP_TIMEOUT_S = 10.0


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host or "127.0.0.1"), int(port or default_port)


class Stack:
    """Starts, inspects and stops the local services in `settings.stack_dir`."""

    def __init__(
        self,
        settings: Settings,
        workers: int = 2,
        brokers: int | None = None,
        s3: bool = False,
        watch: tuple[str, float] | None = None,
        secure: bool = False,
        client_env: Mapping[str, str] | None = None,
    ) -> None:
        """`client_env`: what the k2jobs processes it starts (workers, Flower, beat) get on top of this process's
        environment: a secure stack's client settings (TLS files, passwords), which this process never sets."""
        self.settings = settings
        self.env = {**os.environ, **(client_env or {})}
        self.dir = settings.stack_dir
        self.workers = workers
        self.redis_url = urlparse(settings.redis_url)
        self.kafka_host, self.kafka_port = _host_port(settings.kafka_bootstrap.split(",")[0], 9092)
        self.controller_port = settings.kafka_controller_port or self.kafka_port + 1
        registry = urlparse(settings.schema_registry_url)
        self.registry_host, self.registry_port = registry.hostname or "127.0.0.1", registry.port or 8081
        self.brokers_file = self.dir / "brokers"  # the broker count of this stack folder, remembered by `up`
        self.remembered_brokers = int(self.brokers_file.read_text()) if self.brokers_file.exists() else 1
        self.brokers = brokers or self.remembered_brokers
        self.s3_file = self.dir / "s3"  # `up --s3` once: the S3 server is part of this stack folder from then on
        self.s3 = s3 or self.s3_file.exists()
        # `up --watch DIR`: Celery beat scans DIR every so often, from then on ("" stops and forgets it).
        self.watch_file = self.dir / "watch"
        self.watch = watch if watch is not None else self._remembered_watch()
        self.nodes = self.kafka_nodes(self.brokers)
        # `up --secure` once: TLS, passwords and ACLs for this stack folder from then on (security.py).
        self.was_secure = is_secure(self.dir)
        if secure and not self.was_secure and any((n.home / "data" / "meta.properties").exists() for n in self.nodes):
            raise StackError(
                f"{self.dir} holds an unsecured stack's data: use a new K2_STACK_DIR for `stack up --secure`"
            )
        self.material: Material | None = ensure_material(self.dir) if secure or self.was_secure else None

    def kafka_nodes(self, count: int) -> list[KafkaNode]:
        return kafka_nodes(
            self.dir, self.kafka_host, self.kafka_port, count, self.controller_port if count == 1 else None
        )

    # -- services ---------------------------------------------------------------------------
    def redis_service(self) -> Service:
        """redis-server on its configuration file (mode 0600): a password never goes on its command line."""
        port = self.redis_url.port or 6379
        data = self.dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "redis.conf"
        if self.material:  # TLS, the k2jobs ACL user, an admin
            write_private(conf, redis_conf(self.material, port, data))
        else:
            lines = [f"port {port}", "bind 127.0.0.1", f"dir {data}", "appendonly yes", 'save ""', "daemonize no"]
            if self.redis_url.password:
                lines.append(f"requirepass {self.redis_url.password}")
            write_private(conf, "\n".join(lines) + "\n")
        probe = self._probe("redis")  # redis-server shows "redis-server HOST:PORT" as its command line
        return Service("redis", [need_program("redis-server"), str(conf)], probe.log, probe.pidfile, probe.marker,
                       self._redis_ready)  # fmt: skip

    def kafka_service(self, node: KafkaNode) -> Service:
        props = write_server_properties(node, self.nodes, self.settings.partitions, self.material)
        log4j = resources.files("k2jobs") / "resources" / "log4j2.properties"
        heap = ["-Xms512m", "-Xmx1g"] if len(self.nodes) == 1 else ["-Xms256m", "-Xmx768m"]
        command = [
            "java",
            *heap,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{kafka_libs(self.settings.kafka_libs)}/*",
            "kafka.Kafka",
            str(props),
        ]
        return Service(
            node.name,
            command,
            self.dir / "logs" / f"{node.name}.log",
            self.dir / f"{node.name}.pid",
            str(props),
            lambda: self._node_ready(node),
        )

    def s3_service(self) -> Service:
        port = self.settings.s3_port
        return Service(
            "s3",
            s3_command(port, self.dir / "s3-data"),
            self.dir / "logs" / "s3.log",
            self.dir / "s3.pid",
            f"127.0.0.1:{port}",
            self._s3_ready,
            s3_server_env(self.dir),
        )

    def _s3_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.s3_port}/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # answers (403 without credentials): up
        except OSError:
            return False

    def _s3_probe(self) -> Service:
        port = self.settings.s3_port
        return Service("s3", [], self.dir / "logs" / "s3.log", self.dir / "s3.pid", f"127.0.0.1:{port}", bool)

    def worker_service(self, number: int) -> Service:
        name = f"k2w{number}-{self.kafka_port}@%h"
        env = worker_environment(self.settings, self.env)
        if self.s3 and not (self.env.get("AWS_ENDPOINT_URL") or self.env.get("AWS_ACCESS_KEY_ID")):
            env.update(s3_client_env(self.dir, self.settings.s3_port))  # the stack's own S3 server
        return Service(
            f"worker-{number}",
            worker_command(1, name),
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
        env = self.env
        if self.material:  # Flower reads FLOWER_* options from its environment: the password stays off `ps`
            env = {
                **self.env,
                "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{self.material.passwords['flower']}",
                "FLOWER_CERTFILE": str(self.material.cert),  # HTTPS: the password never crosses in the clear
                "FLOWER_KEYFILE": str(self.material.key),
            }
        return Service(
            "flower",
            command,
            self.dir / "logs" / "flower.log",
            self.dir / "flower.pid",
            f"--port={port}",
            self._flower_ready,
            env,
            # Flower keeps nothing worth a clean exit, and once Redis is gone it does not exit on SIGTERM: its
            # call asking workers to send events retries the lost connection for ever, and Python waits for that
            # thread on exit: `stack down` after a Redis crash would wait the whole STOP_TIMEOUT_S for it.
            stop_timeout_s=FLOWER_STOP_TIMEOUT_S,
        )

    def _remembered_watch(self) -> tuple[str, float] | None:
        if not self.watch_file.exists():
            return None
        remembered = json.loads(self.watch_file.read_text())
        return remembered["directory"], float(remembered["every_s"])

    def beat_service(self) -> Service:
        """Celery beat sending the scheduled scans of the watched directory (celeryconfig.beat_schedule)."""
        directory, every_s = self.watch or ("", 0.0)
        schedule = self.dir / "beat-schedule"
        command = [sys.executable, "-m", "celery", "-A", "k2jobs.app", "beat", "-s", str(schedule), "-l", "INFO"]
        env = {
            **worker_environment(self.settings, self.env),
            "K2_WATCH_DIR": directory,
            "K2_WATCH_EVERY_S": str(every_s),
        }
        return Service("beat", command, self.dir / "logs" / "beat.log", self.dir / "beat.pid", str(schedule), bool, env)

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

    def _node_ready(self, node: KafkaNode) -> bool:
        """The node answers on its own port and counts itself among the cluster's live brokers."""
        from confluent_kafka.admin import AdminClient

        try:
            conf = self.settings.kafka_config(log_level=0, **{"bootstrap.servers": node.bootstrap})
            metadata = AdminClient(conf).list_topics(timeout=2)
            return node.node_id in metadata.brokers
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False

    def _flower_ready(self) -> bool:
        try:
            context = ssl.create_default_context(cafile=str(self.material.ca)) if self.material else None
            with urllib.request.urlopen(self.flower_url() + "/healthcheck", timeout=2, context=context) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def flower_url(self) -> str:
        return f"{'https' if self.material else 'http'}://127.0.0.1:{self.settings.flower_port}"

    # -- commands ---------------------------------------------------------------------------
    def registry_service(self) -> Service:
        command = registry_command(self.dir, self.registry_host, self.registry_port)
        return Service(
            "registry",
            command,
            self.dir / "logs" / "registry.log",
            self.dir / "registry.pid",
            self._probe("registry").marker,
            lambda: registry_ready(self.settings),
        )

    def up(self) -> dict[str, Any]:
        """Start what is not running, in order, and return when everything is ready."""
        self.dir.mkdir(parents=True, exist_ok=True)
        workers_running = any(w.pid() for w in self.worker_services())
        if self.s3 and not self.s3_file.exists() and workers_running:
            raise StackError("this stack's workers run without the S3 settings: `stack down` before `stack up --s3`")
        self._refuse_other_broker_count()  # both refusals before anything starts
        self._warn_of_ephemeral_ports()
        self._ensure(self.redis_service())
        # The registry needs neither Redis nor Kafka: it starts while the brokers do (they leave a core idle).
        registry = self.registry_service()
        self._start(registry)
        started_brokers = self._ensure_brokers()
        # k2jobs' topics now, not on the first job's path (creating them and electing their leaders takes a while);
        # on a secure stack grant_kafka creates them, as the Kafka admin.
        if self.material:
            grant_kafka(self.settings, self.material)
            write_env_file(self.dir / "client.env", self.client_env())
        else:
            from k2jobs.kafka.topics import ensure_topics

            ensure_topics(self.settings, timeout_s=30)
        # A broker this call started is warmed while the rest starts, and is warm when `up` returns. Not one restarted
        # under running workers (a crash, the soak): their jobs are its traffic, and warm-up would compete with them.
        warm = started_brokers and not workers_running and self.settings.broker_warm_up_s > 0
        rest_ready = threading.Event()
        warm_up = Meanwhile(lambda: self._warm_broker(rest_ready), "k2jobs-broker-warm-up") if warm else None
        try:
            self._ensure(registry)
            set_backward_compatibility(self.settings)
            if self.s3:
                self.s3_file.touch()
                self._ensure(self.s3_service())
                write_client_env(self.dir, self.settings.s3_port)
            workers = self.worker_services()
            for worker in workers:
                if worker.pid() is None:
                    worker.start()
            self._wait_workers(workers)
            self._ensure(self.flower_service())
            self._ensure_beat()
        finally:
            rest_ready.set()  # the warm-up stops after its `broker_warm_up_s`, or now if later
        if warm_up is not None:
            warm_up.result()
        return self.status()

    def _warm_broker(self, rest_ready: threading.Event) -> None:
        """Warm the broker(s) just started (k2jobs/broker_warm_up.py); what it sent goes to broker-warm-up.json. A
        failure is logged, not raised: the stack works without it, only its first job is slower."""
        from k2jobs.stack.warm_up import warm_broker

        # As the stack's Kafka admin on a secure stack: the k2jobs user may only write k2jobs' own topics.
        settings = as_kafka_admin(self.settings, self.material) if self.material else self.settings
        try:
            sent = warm_broker(settings, self.settings.broker_warm_up_s, rest_ready)
        except Exception as exc:  # noqa: BLE001 - any failure: the stack is up, only not warm
            log.warning("broker warm-up failed, the first job will be slower: %s", exc)
            return
        (self.dir / "broker-warm-up.json").write_text(json.dumps(sent) + "\n")

    def client_env(self) -> dict[str, str]:
        """A secure stack's client settings (`<stack>/client.env`): the ones this process runs with."""
        assert self.material is not None, "only a secure stack writes client.env"
        env = {
            "K2_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
            "K2_REDIS_URL": self.settings.redis_url,
            "K2_FLOWER_USER": FLOWER_USER,
            "K2_FLOWER_PASSWORD": self.material.passwords["flower"],
            "K2_SCHEMA_REGISTRY_URL": self.settings.schema_registry_url,
        }
        for option in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.location"):
            env[KAFKA_OPTION_PREFIX + option.upper().replace(".", "_")] = self.settings.kafka_options[option]
        return env

    def _ensure_beat(self) -> None:
        """Start, restart (another directory or period) or stop Celery beat as `--watch` says."""
        beat = self.beat_service()
        remembered = self._remembered_watch()
        if beat.pid() is not None and self.watch != remembered:
            stop(beat)
        if not self.watch or not self.watch[0]:
            stop(beat)
            self.watch_file.unlink(missing_ok=True)
            return
        directory, every_s = self.watch
        if every_s <= 0:
            raise StackError("--watch-every must be positive")
        self.watch_file.write_text(json.dumps({"directory": directory, "every_s": every_s}))
        if beat.pid() is None:
            beat.start()
            # Exec'd, with its command line (until then its pid shows the parent's, so no `service`: that would
            # read as the process having exited).
            wait_until_ready("celery beat", lambda: beat.pid() is not None)

    @staticmethod
    def _start(service: Service) -> bool:
        """Start a service that is neither running nor answering (one started elsewhere answers); whether it did."""
        if service.pid() is None and not service.ready():
            service.start()
            return True
        return False

    def _ensure(self, service: Service) -> None:
        self._start(service)
        wait_until_ready(service.name, service.ready, service if service.pid() else None)

    def _warn_of_ephemeral_ports(self) -> None:
        ports = [self.redis_url.port or 6379, self.registry_port, self.settings.flower_port]
        ports += [port for node in self.nodes for port in (node.port, node.controller_port)]
        if self.s3:
            ports.append(self.settings.s3_port)
        taken = ports_clients_may_take(ports)
        if taken:
            log.warning(
                "ports %s are in the kernel's ephemeral port range: while a service there is down, a client "
                "reconnecting to it may be given its port and connect to itself, and the service cannot start on it "
                "again (`Address already in use`). Use ports below the range (/proc/sys/net/ipv4/ip_local_port_range) "
                "or reserve them (sysctl net.ipv4.ip_local_reserved_ports)",
                ", ".join(map(str, taken)),
            )

    def _refuse_other_broker_count(self) -> None:
        if self.brokers != self.remembered_brokers and any(
            self._probe_node(n).pid() for n in self.kafka_nodes(self.remembered_brokers)
        ):
            raise StackError(
                f"this stack runs {self.remembered_brokers} broker(s): `stack down` before `--brokers {self.brokers}`"
            )

    def _ensure_brokers(self) -> bool:
        """Start every broker that is not running, then wait for all: a cluster's controllers need each other.
        Whether it started any."""
        self.brokers_file.write_text(str(self.brokers))
        services = [self.kafka_service(node) for node in self.nodes]
        started = [self._start(service) for service in services]  # every one, then wait
        for service in services:
            wait_until_ready(service.name, service.ready, service if service.pid() else None)
        return any(started)

    def _wait_workers(self, workers: list[Service]) -> None:
        """Until every worker answers a ping, asked through this stack's Redis (with its TLS on a secure stack)."""
        from celery import Celery

        names = {w.marker.replace("%h", os.uname().nodename) for w in workers}
        app = Celery("k2jobs-stack", broker=self.settings.redis_url, set_as_current=False)
        tls = redis_tls(self.settings.redis_url)
        if tls is not None:
            app.conf.broker_use_ssl = tls

        def all_answer() -> bool:
            replies = app.control.ping(timeout=1.0)
            return names <= {name for reply in replies for name in reply}

        try:
            wait_until_ready("celery workers", all_answer)
        finally:
            app.close()

    def _probe(self, name: str) -> Service:
        """Redis's or the registry's pid file and command-line marker, without building (or needing) its command."""
        markers = {
            "redis": f"redis-server 127.0.0.1:{self.redis_url.port or 6379}",
            "registry": f"-Dquarkus.http.port={self.registry_port} ",
        }
        return Service(name, [], self.dir / "logs" / f"{name}.log", self.dir / f"{name}.pid", markers[name], bool)

    def _probe_node(self, node: KafkaNode) -> Service:
        """A Kafka node's pid file and marker, without writing its properties."""
        return Service(
            node.name,
            [],
            self.dir / "logs" / f"{node.name}.log",
            self.dir / f"{node.name}.pid",
            str(node.properties),
            bool,
        )

    def status(self) -> dict[str, Any]:
        """Pids of the running services (None where not running)."""
        brokers = [{"id": n.node_id, "pid": self._probe_node(n).pid(), "bootstrap": n.bootstrap} for n in self.nodes]
        return {
            "redis": {"pid": self._probe("redis").pid(), "url": masked_url(self.settings.redis_url)},
            # The first broker, what clients bootstrap from; every broker under "brokers".
            "kafka": {"pid": brokers[0]["pid"], "bootstrap": self.settings.kafka_bootstrap},
            "brokers": brokers,
            "workers": [{"name": w.name, "pid": w.pid()} for w in self.worker_services() if w.pidfile.exists()],
            "flower": {"pid": self.flower_service().pid(), "url": self.flower_url()},
            **({"client_env": str(self.dir / "client.env")} if self.material else {}),
            **(
                {"beat": {"pid": self.beat_service().pid(), "directory": self.watch[0], "every_s": self.watch[1]}}
                if self.watch and self.watch[0]
                else {}
            ),
            "registry": {"pid": self._probe("registry").pid(), "url": self.settings.schema_registry_url},
            **(
                {
                    "s3": {
                        "pid": self._s3_probe().pid(),
                        "url": f"http://127.0.0.1:{self.settings.s3_port}",
                        "client_env": str(self.dir / "s3.env"),  # its settings, secret included: mode 0600
                    }
                }
                if self.s3
                else {}
            ),
        }

    def down(self) -> list[str]:
        """Stop what this stack started: workers first so they finish their chunks, Redis last."""
        services = [
            self.beat_service(),
            *self.worker_services(),
            self.flower_service(),
            self._probe("registry"),
            self._s3_probe(),
        ]
        stopped = [service.name for service in services if stop(service)]
        # All brokers at once: a cluster's last broker cannot shut down cleanly once the other controllers are gone.
        brokers = [self._probe_node(node) for node in self.nodes]
        with ThreadPoolExecutor(max_workers=len(brokers)) as pool:
            stopped += [broker.name for broker, done in zip(brokers, pool.map(stop, brokers), strict=True) if done]
        if stop(self._probe("redis")):
            stopped.append("redis")
        for worker_pid in self.dir.glob("worker-*.pid"):
            worker_pid.unlink(missing_ok=True)
        return stopped
