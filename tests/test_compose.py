"""docker-compose.yml and the Dockerfile, checked by parsing: there is no Docker engine to run them."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import celeryconfig
from k2jobs.config import load_settings
from k2jobs.publisher import check_client_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

QUEUES = {queue.name for queue in celeryconfig.task_queues}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict of strings, from either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    # As compose reads it with the variables unset: ${NAME:-default} is its default.
    return {str(k): re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each volume, from the short or the long syntax."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            found.append((parts[0], parts[1], "ro" in parts[2:]))
        else:
            found.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
    return found


def option(args: list[str], name: str) -> str:
    """The value of `name` in a command line, given as `name value` or `name=value`."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def k2jobs_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the image built from this repository."""
    return {name: svc for name, svc in services.items() if "build" in svc}


def healthy_dependencies(service: dict[str, Any]) -> set[str]:
    depends = service.get("depends_on") or {}
    assert isinstance(depends, dict), "depends_on must use the long form to wait for health"
    return {name for name, spec in depends.items() if spec.get("condition") == "service_healthy"}


def test_the_stack_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "redis", "registry", "worker", "flower", "submit"} <= set(services)


def test_kafka_is_a_single_kraft_node_with_replication_factor_one(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"].split(",")
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    # Containers reach the broker by its service name.
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    for name in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
    ):
        assert env[name] == "1", name
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_kafka_keeps_its_log_in_a_named_volume(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    log_dirs = env_of(kafka)["KAFKA_LOG_DIRS"]
    volume = next(source for source, target, _ in mounts(kafka) if target == log_dirs)
    assert volume in compose["volumes"]
    assert any("kafka-broker-api-versions" in part for part in argv(kafka["healthcheck"]["test"]))


def test_redis_persists_to_a_named_volume(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    assert option(argv(redis["command"]), "--appendonly") == "yes"
    volume = next(source for source, target, _ in mounts(redis) if target == "/data")
    assert volume in compose["volumes"]
    assert "ping" in argv(redis["healthcheck"]["test"])


def test_worker_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    # `--scale worker=N` needs N containers that differ only by the name compose gives them.
    for fixed in ("container_name", "ports", "hostname"):
        assert fixed not in worker, fixed
    assert worker.get("network_mode") != "host"
    # Celery node names must differ per container: without -n, Celery uses celery@<container hostname>.
    assert "-n" not in argv(worker["command"]) and "--hostname" not in argv(worker["command"])


def test_every_volume_is_declared_or_a_relative_bind(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name, svc in services.items():
        for source, target, _ in mounts(svc):
            assert source.startswith("./") or source in compose["volumes"], (name, source)
            assert target.startswith("/"), (name, target)


def test_every_dependency_waits_for_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        depends = svc.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on must use the long form to wait for health"
        for dependency, spec in depends.items():
            assert spec["condition"] == "service_healthy", (name, dependency)
            check = services[dependency].get("healthcheck") or {}
            assert check.get("test") and {"interval", "retries"} <= set(check), (name, dependency)


def test_only_flower_and_s3_publish_a_host_port_and_only_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    assert {name for name, svc in services.items() if svc.get("ports")} == {"s3", "flower"}
    (port,) = services["flower"]["ports"]
    assert str(port).startswith("127.0.0.1:") and str(port).endswith(":5555")
    (port,) = services["s3"]["ports"]
    assert str(port).startswith("127.0.0.1:") and str(port).endswith(":7070")


def test_s3_serves_a_folder_and_the_k2jobs_services_reach_it_with_the_standard_aws_settings(
    services: dict[str, dict[str, Any]],
) -> None:
    s3 = services["s3"]
    command = s3["command"]
    assert command[command.index("--port") + 1] == ":7070" and command[-2:] == ["posix", "/s3"]
    assert {"ROOT_ACCESS_KEY", "ROOT_SECRET_KEY"} <= set(env_of(s3))
    assert [(source, target) for source, target, _ in mounts(s3)] == [("./s3", "/s3")]
    for name in ("worker", "submit", "flower"):
        env = env_of(services[name])
        assert env["AWS_ENDPOINT_URL"] == "http://s3:7070", name
        assert env["AWS_ACCESS_KEY_ID"] == env_of(s3)["ROOT_ACCESS_KEY"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == env_of(s3)["ROOT_SECRET_KEY"], name
        assert env["AWS_REGION"]


def test_worker_consumes_every_celery_queue(services: dict[str, dict[str, Any]]) -> None:
    args = argv(services["worker"]["command"])
    assert args[:4] == ["celery", "-A", "k2jobs.app", "worker"]
    assert set(option(args, "-Q").split(",")) == QUEUES
    assert "-E" in args, "Flower sees no tasks without worker events"


def test_k2jobs_services_wait_for_healthy_redis_and_kafka(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "flower", "submit"):
        assert healthy_dependencies(services[name]) >= {"redis", "kafka"}, name
    for name in ("redis", "kafka"):
        assert services[name]["healthcheck"]["test"], name


def test_k2jobs_services_share_one_image_and_environment(services: dict[str, dict[str, Any]]) -> None:
    ours = k2jobs_services(services)
    assert {"worker", "flower", "submit"} <= set(ours)
    assert len({svc.get("image") for svc in ours.values()}) == 1
    assert len({tuple(sorted(env_of(svc).items())) for svc in ours.values()}) == 1


def test_workers_reach_redis_and_kafka_by_service_name(services: dict[str, dict[str, Any]]) -> None:
    """The settings a worker reads (through k2jobs.config) name the compose services and their ports."""
    settings = load_settings(env_of(services["worker"]))
    redis_url = urlsplit(settings.redis_url)
    assert (redis_url.scheme, redis_url.hostname, redis_url.port or 6379) == ("redis", "redis", 6379)
    assert "--port" not in argv(services["redis"]["command"])  # so Redis listens on its default 6379
    host, port = settings.kafka_bootstrap.split(":")
    assert host in services
    kafka_env = env_of(services[host])
    assert f"PLAINTEXT://{host}:{port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"PLAINTEXT://:{port}" in kafka_env["KAFKA_LISTENERS"].split(",")
    assert settings.data_root == Path(env_of(services["worker"])["K2_DATA_ROOT"])
    check_client_settings(settings)  # every K2_KAFKA_OPT_* in the file is one librdkafka accepts


@pytest.mark.parametrize("name", ["worker", "submit"])
def test_data_folder_is_mounted_read_only_at_the_data_root(services: dict[str, dict[str, Any]], name: str) -> None:
    svc = services[name]
    data_root = env_of(svc)["K2_DATA_ROOT"]
    assert ("./data", data_root, True) in mounts(svc)


def test_submit_runs_the_cli_from_the_data_root(services: dict[str, dict[str, Any]]) -> None:
    submit = services["submit"]
    assert "tools" in submit["profiles"], "`docker compose up` must not start it"
    assert argv(submit["entrypoint"]) == ["python", "-m", "k2jobs"]
    # `docker compose run --rm submit submit sample` loads ./data/sample.
    assert submit["working_dir"] == env_of(submit)["K2_DATA_ROOT"]


def test_flower_runs_the_flower_subcommand(services: dict[str, dict[str, Any]]) -> None:
    args = argv(services["flower"]["command"])
    assert args[:4] == ["celery", "-A", "k2jobs.app", "flower"]
    assert option(args, "--port") == "5555"
    assert option(args, "--address") == "0.0.0.0"


def dockerfile_stages(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(stage name, [(INSTRUCTION, arguments)]) per FROM, comments dropped and continued lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            words = args.split()
            stages.append((words[2] if len(words) > 2 and words[1].upper() == "AS" else str(len(stages)), []))
        stages[-1][1].append((instruction.upper(), args.strip()))
    return stages


def runs(stage: list[tuple[str, str]]) -> list[list[str]]:
    """Every command of the stage's RUN instructions (split at &&), as argv lists."""
    return [shlex.split(part) for kind, args in stage if kind == "RUN" for part in args.split("&&")]


def test_dockerfile_builds_the_compiled_parser_and_runs_as_non_root(services: dict[str, dict[str, Any]]) -> None:
    build = services["worker"]["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
    assert dockerfile == DOCKERFILE
    stages = dockerfile_stages(DOCKERFILE.read_text())
    (build_name, build_stage), (_, final) = stages[0], stages[-1]
    assert len(stages) >= 2, "a build stage keeps the compiler out of the image"
    assert final[0][1].split()[0].startswith("python:3.11")
    copied = {part.rstrip("/") for kind, args in build_stage if kind == "COPY" for part in args.split()[:-1]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {project["project"]["readme"], "pyproject.toml", "k2jobs"}
    needed |= {module + ".py" for module in project["tool"]["setuptools"]["py-modules"]}
    assert needed <= copied, f"pip install . needs {sorted(needed - copied)}"
    assert any(cmd[:1] == ["apt-get"] and "install" in cmd and "gcc" in cmd for cmd in runs(build_stage))
    [wheel] = [cmd for cmd in runs(build_stage) if cmd[:2] == ["pip", "wheel"]]
    assert wheel[-1] == "." and "--no-deps" in wheel
    wheels = option(wheel, "--wheel-dir")
    assert ("COPY", f"--from={build_name} {wheels} {wheels}") in final
    assert any(cmd[:2] == ["pip", "install"] and cmd[2].startswith(wheels) for cmd in runs(final))
    assert ["python", "-c", "import k2jobs._fastrows"] in runs(final), "the image must fail to build without it"
    users = [args for kind, args in final if kind == "USER"]
    assert users and users[-1] not in {"root", "0"}
    [cmd] = [json.loads(args) for kind, args in final if kind == "CMD"]
    assert cmd[:4] == ["celery", "-A", "k2jobs.app", "worker"]
    assert set(option(cmd, "-Q").split(",")) == QUEUES


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", "data", ".git"} <= ignored


def test_registry_serves_confluents_api_to_the_k2jobs_services(services: dict[str, dict[str, Any]]) -> None:
    registry = services["registry"]
    assert registry["image"].startswith("apicurio/apicurio-registry:3.")
    port = env_of(registry).get("QUARKUS_HTTP_PORT", "8080")  # Apicurio's default HTTP port
    for name, svc in k2jobs_services(services).items():
        assert env_of(svc)["K2_SCHEMA_REGISTRY_URL"] == f"http://registry:{port}/apis/ccompat/v7", name
        assert "registry" in healthy_dependencies(svc), name
    assert any("/apis/ccompat/v7" in part for part in argv(registry["healthcheck"]["test"]))


def test_registry_keeps_schemas_in_kafka_with_backward_compatibility(services: dict[str, dict[str, Any]]) -> None:
    registry = services["registry"]
    env = env_of(registry)
    # kafkasql storage: the schemas live in a Kafka topic, so they persist in Kafka's volume.
    assert env["APICURIO_STORAGE_KIND"] == "kafkasql"
    assert env["APICURIO_KAFKASQL_BOOTSTRAP_SERVERS"] == env_of(services["worker"])["K2_KAFKA_BOOTSTRAP"]
    assert "kafka" in healthy_dependencies(registry)
    assert env["APICURIO_RULES_GLOBAL_COMPATIBILITY"] == "BACKWARD"  # Confluent's default; Apicurio's is NONE


# -- the three-broker variant: docker compose -f docker-compose.yml -f docker-compose.cluster.yml ------------------
CLUSTER = ROOT / "docker-compose.cluster.yml"
BROKERS = ("kafka", "kafka-2", "kafka-3")


def compose_merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for what these files use: mappings merge key by key, the rest replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {
            key: compose_merge(base.get(key), override[key]) if key in base else override[key] for key in override
        } | {key: value for key, value in base.items() if key not in override}
    return override


@pytest.fixture(scope="module")
def cluster(compose: dict[str, Any]) -> dict[str, Any]:
    return compose_merge(compose, yaml.safe_load(CLUSTER.read_text()))  # type: ignore[no-any-return]


def test_cluster_variant_runs_three_kraft_voters(cluster: dict[str, Any]) -> None:
    services = cluster["services"]
    envs = {name: env_of(services[name]) for name in BROKERS}
    assert {env["KAFKA_NODE_ID"] for env in envs.values()} == {"1", "2", "3"}
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1
    voters = {f"{env['KAFKA_NODE_ID']}@{name}:9093" for name, env in envs.items()}
    for name, env in envs.items():
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, name
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters, name
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092", name
        assert services[name]["image"].startswith("apache/kafka:"), name


def test_cluster_variant_replicates_every_topic_three_times(cluster: dict[str, Any]) -> None:
    for name in BROKERS:
        env = env_of(cluster["services"][name])
        for factor in (
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        ):
            assert env[factor] == "3", (name, factor)
        for min_isr in (
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
            "KAFKA_MIN_INSYNC_REPLICAS",
        ):
            assert env[min_isr] == "2", (name, min_isr)
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", name


def test_cluster_variant_gives_each_broker_its_own_volume_and_healthcheck(cluster: dict[str, Any]) -> None:
    services = cluster["services"]
    volumes = []
    for name in BROKERS:
        log_dirs = env_of(services[name])["KAFKA_LOG_DIRS"]
        volumes.append(next(source for source, target, _ in mounts(services[name]) if target == log_dirs))
        assert any("kafka-broker-api-versions" in part for part in argv(services[name]["healthcheck"]["test"])), name
    assert len(set(volumes)) == 3
    assert set(volumes) <= set(cluster["volumes"])


def test_cluster_variant_k2jobs_services_bootstrap_from_every_broker(cluster: dict[str, Any]) -> None:
    services = cluster["services"]
    for name in ("worker", "flower", "submit"):
        env = env_of(services[name])
        assert env["K2_KAFKA_BOOTSTRAP"].split(",") == [f"{broker}:9092" for broker in BROKERS], name
        assert healthy_dependencies(services[name]) >= {"redis", *BROKERS}, name
        assert env["K2_REDIS_URL"].startswith("redis://redis:6379/"), name  # the rest of the base file is kept
    assert {name for name, svc in services.items() if svc.get("ports")} == {"flower", "s3"}


def test_beat_sends_the_scheduled_scans_of_the_watched_folder(services: dict[str, dict[str, Any]]) -> None:
    beat = services["beat"]
    assert "watch" in beat["profiles"], "`docker compose up` without --profile watch must not start it"
    assert argv(beat["command"])[:4] == ["celery", "-A", "k2jobs.app", "beat"]
    env = {**env_of(beat), "K2_WATCH_DIR": "sample", "K2_WATCH_EVERY_S": "10"}  # as `K2_WATCH_DIR=sample ... up`
    settings = load_settings(env)
    assert (settings.watch_dir, settings.watch_every_s) == ("sample", 10.0)
    shown = subprocess.run(
        [sys.executable, "-c", "import celeryconfig, json; print(json.dumps(celeryconfig.beat_schedule))"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    [entry] = json.loads(shown.stdout).values()
    assert entry["task"] == "k2jobs.scan_directory" and entry["args"] == ["sample"] and entry["schedule"] == 10.0
    assert "K2_WATCH_DIR" in env_of(services["worker"])  # one environment: the worker runs the scans
