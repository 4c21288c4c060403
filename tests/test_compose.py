"""docker-compose.yml and the Dockerfile, checked by parsing: there is no Docker engine to run them."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

import celeryconfig
import k2jobs.stack.compose_secrets as compose_secrets
from k2jobs.config import load_settings
from k2jobs.kafka.preflight import check_client_settings
from k2jobs.stack.secrets import REDIS_USER_RULES, Material, kafka_properties

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
    assert ["python", "-c", "import k2jobs.rows._fastrows"] in runs(final), "the image must fail to build without it"
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


# -- security on: docker compose -f docker-compose.yml -f docker-compose.secure.yml (issue 20) ---------------------
SECURE = ROOT / "docker-compose.secure.yml"
SECRETS = Path("./secrets")  # the secrets folder as the compose files name it with K2_SECRETS_DIR unset
CA_IN_CONTAINERS = "/etc/k2jobs/tls/ca.pem"
K2JOBS_SECURE = ("worker", "flower", "beat", "submit", "grant")
# The files `compose_secrets init` writes that hold a secret: private to their owner.
PRIVATE = (
    "client.env",
    "flower.env",
    "kafka.env",
    "kafka-admin.env",
    "registry.env",
    "kafka-admin.properties",
    "kafka-scram.args",
    "redis.conf",
)


class Reset:
    """Compose's `!reset` tag: the key is removed from what the earlier files set."""


class ComposeLoader(yaml.SafeLoader):
    """yaml.SafeLoader reading compose's `!reset` tag."""


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def load_compose(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # a SafeLoader


def volume_target(volume: Any) -> str:
    return str(volume["target"] if isinstance(volume, dict) else volume.split(":")[-2 if volume.count(":") > 1 else 1])


def compose_merge_spec(base: Any, override: Any, key: str = "") -> Any:
    """Compose's merge (compose-spec merge.md) for what the secure file uses: mappings merge key by key and `!reset`
    removes a key; command, entrypoint and healthcheck test replace; volumes merge by target; other sequences
    (env_file, ports) append what is new."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for name, value in override.items():
            if isinstance(value, Reset):
                merged.pop(name, None)
            else:
                merged[name] = compose_merge_spec(merged[name], value, name) if name in merged else value
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in ("command", "entrypoint", "test"):
        if key == "volumes":
            replaced = {volume_target(volume) for volume in override}
            return [volume for volume in base if volume_target(volume) not in replaced] + override
        return base + [item for item in override if item not in base]
    return override


def as_unset(node: Any) -> Any:
    """Every string as compose reads it with the variables unset: ${NAME:-default} is its default, $$ is $."""
    if isinstance(node, dict):
        return {key: as_unset(value) for key, value in node.items()}
    if isinstance(node, list):
        return [as_unset(value) for value in node]
    if isinstance(node, str):
        return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", node).replace("$$", "$")
    return node


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def read_env(path: Path) -> dict[str, str]:
    """An env file as docker compose (and a shell) reads it."""
    return dict(line.split("=", 1) for text in path.read_text().splitlines() for line in shlex.split(text))


def generated(secrets: Path, source: str) -> Path:
    """The file `compose_secrets init` wrote that a compose path under ./secrets names."""
    return secrets / Path(source).relative_to(SECRETS)


def env_files(service: dict[str, Any]) -> list[str]:
    files = service.get("env_file") or []
    return [files] if isinstance(files, str) else [str(Path(f if isinstance(f, str) else f["path"])) for f in files]


def image_server_properties(env: dict[str, str]) -> dict[str, str]:
    """The server properties the apache/kafka image writes from its KAFKA_* variables (KafkaDockerWrapper)."""
    jvm = {"KAFKA_VERSION", "KAFKA_HEAP_OPTS", "KAFKA_LOG4J_OPTS", "KAFKA_OPTS", "KAFKA_JMX_OPTS"}
    jvm |= {"KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_JMX_HOSTNAME"}
    return {
        name.replace("KAFKA_", "").lower().replace("_", ".").replace("...", "-").replace("..", "_"): value
        for name, value in env.items()
        if name.startswith("KAFKA_") and name not in jvm and "LOG4J" not in name
    }


@pytest.fixture(scope="module")
def secure() -> dict[str, Any]:
    """docker-compose.yml with docker-compose.secure.yml over it, as compose merges them."""
    return as_unset(compose_merge_spec(load_compose(COMPOSE), load_compose(SECURE)))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def secure_services(secure: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return secure["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A secrets folder as `python -m k2jobs.stack.compose_secrets init` makes it."""
    folder = tmp_path_factory.mktemp("compose") / "secrets"
    assert compose_secrets.main(["init", str(folder)]) == 0
    return folder


def passwords_of(secrets: Path) -> dict[str, str]:
    return json.loads((secrets / "secure" / "passwords.json").read_text())  # type: ignore[no-any-return]


def test_secure_variant_has_no_plaintext_listener_and_no_redis_url(secure: dict[str, Any]) -> None:
    # What compose runs (x-* extension fields are only YAML anchors' material).
    assert not [text for text in strings(secure["services"]) if "PLAINTEXT" in text or "redis://" in text]
    env = env_of(secure["services"]["kafka"])
    protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = env["KAFKA_LISTENERS"].split(",") + env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    names = [listener.split("://")[0] for listener in listeners]
    names += [env["KAFKA_INTER_BROKER_LISTENER_NAME"], env["KAFKA_CONTROLLER_LISTENER_NAMES"]]
    assert {protocols[name] for name in names} == {"SASL_SSL"}


def test_secure_kafka_has_the_local_stacks_security_settings(
    secure_services: dict[str, dict[str, Any]], secrets: Path
) -> None:
    """What the broker runs with (the YAML, then kafka.env) holds every line of security.kafka_properties."""
    kafka = secure_services["kafka"]
    yaml_env = env_of(kafka)
    assert not [name for name in yaml_env if "JAAS" in name], "the logins come from kafka.env"
    [env_file] = [generated(secrets, path) for path in env_files(kafka)]
    properties = image_server_properties({**read_env(env_file), **yaml_env})  # environment wins over env_file
    material = Material(Path("/etc/kafka/secrets"), passwords_of(secrets))
    for line in kafka_properties(material, listener=compose_secrets.LISTENER):
        name, value = line.split("=", 1)
        if name.endswith(".map"):  # a list of pairs, in any order
            assert set(properties[name].split(",")) == set(value.split(",")), name
        else:
            assert properties.get(name) == value, name
    assert properties["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert properties["super.users"] == "User:k2admin"
    assert properties["allow.everyone.if.no.acl.found"] == "false"
    assert (properties["ssl.keystore.type"], properties["sasl.mechanism.controller.protocol"]) == ("PEM", "PLAIN")
    # The keystore and CA are in the volume kafka-init fills; the image's start script would demand JKS-style
    # credential files for an advertised "SSL://" listener (and a keystore password Kafka refuses with PEM).
    assert ("kafka-secrets", "/etc/kafka/secrets", False) in mounts(kafka)
    assert "SSL://" not in yaml_env["KAFKA_ADVERTISED_LISTENERS"]
    command_config = option(argv(kafka["healthcheck"]["test"][-1]), "--command-config")
    assert command_config.startswith("/etc/kafka/secrets/"), "the health check logs in"


def test_secure_kafka_storage_gets_the_scram_users_before_kafka_starts(
    secure: dict[str, Any], secure_services: dict[str, dict[str, Any]]
) -> None:
    kafka, init = secure_services["kafka"], secure_services["kafka-init"]
    assert kafka["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert init["image"] == kafka["image"] and init["restart"] == "no"
    kafka_env, init_env = env_of(kafka), env_of(init)
    for name in ("CLUSTER_ID", "KAFKA_NODE_ID", "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_LOG_DIRS"):
        assert init_env[name] == kafka_env[name], name
    data = kafka_env["KAFKA_LOG_DIRS"]
    volume = next(source for source, target, _ in mounts(kafka) if target == data)
    assert (volume, data, False) in mounts(init) and volume in secure["volumes"]
    assert ("kafka-secrets", "/etc/kafka/secrets", False) in mounts(init)
    script = argv(init["command"])[-1]
    # The format config names kafka's listeners and their protocols (a valid config for this node).
    assert f"listeners={kafka_env['KAFKA_LISTENERS']}" in script.split()
    assert f"listener.security.protocol.map={kafka_env['KAFKA_LISTENER_SECURITY_PROTOCOL_MAP']}" in script.split()
    assert "kafka.tools.StorageTool format" in script and '--cluster-id "$CLUSTER_ID"' in script
    # The SCRAM users' passwords reach java in an @argfile from the secrets folder, never a command line; the
    # tool's output (salted keys) is captured, and only an error's lines without them are shown.
    assert ("./secrets/kafka-scram.args", "/k2secrets/kafka-scram.args", True) in mounts(init)
    assert "cat /k2secrets/kafka-scram.args" in script and "--add-scram" not in script
    assert "out=$(java @/tmp/format.args 2>&1)" in script and "grep -iv scram >&2" in script
    # A volume formatted by an unsecured run (no SCRAM users) is refused.
    assert "meta.properties" in script and "down -v" in script


def test_secure_grant_runs_as_admin_after_kafka_and_before_the_k2jobs_services(
    secure_services: dict[str, dict[str, Any]],
) -> None:
    grant = secure_services["grant"]
    assert argv(grant["entrypoint"]) + argv(grant["command"]) == [
        "python",
        "-m",
        "k2jobs.stack.compose_secrets",
        "grant",
    ]
    assert grant["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert grant["restart"] == "no" and "profiles" not in grant
    assert {Path(path).name for path in env_files(grant)} == {"client.env", "kafka-admin.env"}
    for name in K2JOBS_SECURE[:-1]:
        assert secure_services[name]["depends_on"]["grant"]["condition"] == "service_completed_successfully", name
        assert "kafka-admin.env" not in {Path(path).name for path in env_files(secure_services[name])}, name


def test_secure_k2jobs_services_read_the_client_env_and_the_ca(
    secure_services: dict[str, dict[str, Any]], secrets: Path
) -> None:
    assert set(K2JOBS_SECURE) == set(k2jobs_services(secure_services))
    for name in K2JOBS_SECURE:
        svc = secure_services[name]
        assert str(SECRETS / "client.env") in env_files(svc), name
        assert ("./secrets/ca.pem", CA_IN_CONTAINERS, True) in mounts(svc), name
        assert "K2_REDIS_URL" not in env_of(svc), f"{name}: docker-compose.yml's redis:// would win over client.env"
        settings = load_settings({**read_env(secrets / "client.env"), **env_of(svc)})
        redis_url = urlsplit(settings.redis_url)
        assert (redis_url.scheme, redis_url.hostname, redis_url.port, redis_url.username) == (
            "rediss",
            "redis",
            6379,
            "k2jobs",
        ), name
        assert dict(parse_qsl(redis_url.query)) == {"ssl_cert_reqs": "required", "ssl_ca_certs": CA_IN_CONTAINERS}
        options = settings.kafka_options
        assert (options["security.protocol"], options["sasl.mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512"), name
        assert (options["sasl.username"], options["ssl.ca.location"]) == ("k2jobs", CA_IN_CONTAINERS), name
        assert settings.kafka_bootstrap.split(":")[0] in secure_services, name
        assert not [key for key in read_env(secrets / "client.env") if key.startswith("K2_FLOWER")], name
    # librdkafka accepts the options (with the CA where this host has it).
    options = {**settings.kafka_options, "ssl.ca.location": str(secrets / "ca.pem")}
    check_client_settings(replace(settings, kafka_options=options))


def test_secure_flower_login_comes_from_its_env_file_only(
    secure_services: dict[str, dict[str, Any]], secrets: Path
) -> None:
    flower = secure_services["flower"]
    assert not [name for name, svc in secure_services.items() if "FLOWER_BASIC_AUTH" in env_of(svc)]
    assert not [arg for arg in argv(flower["command"]) if "basic" in arg.lower() or "auth" in arg.lower()]
    [path] = [path for path in env_files(flower) if Path(path).name == "flower.env"]
    assert read_env(generated(secrets, path)) == {"FLOWER_BASIC_AUTH": f"k2jobs:{passwords_of(secrets)['flower']}"}
    assert [name for name, svc in secure_services.items() if path in env_files(svc)] == ["flower"]
    # /metrics and /healthcheck stay open (mher/flower#1342): loopback only.
    assert flower["ports"] and all(str(port).startswith("127.0.0.1:") for port in flower["ports"])
    assert {name for name, svc in secure_services.items() if svc.get("ports")} == {"flower", "s3"}


def test_secure_redis_runs_its_conf_from_the_secrets_folder(
    secure_services: dict[str, dict[str, Any]], secrets: Path
) -> None:
    redis = secure_services["redis"]
    command = argv(redis["command"])
    assert command[0] == "redis-server" and len(command) == 2
    conf = Path(command[1])
    copied = {target: source for source, target, read_only in mounts(redis) if read_only}
    assert copied["/k2secrets/redis.conf"] == "./secrets/redis.conf"
    # The entrypoint copies the mounted files to conf's folder (for the redis user), then runs the image's own.
    script = argv(redis["entrypoint"])[2]
    install = next(part.split() for part in script.split("&&") if "/k2secrets/redis.conf" in part)
    assert install[-1].rstrip("/") == str(conf.parent) and set(install[-5:-1]) == set(copied)
    assert script.strip().endswith('exec docker-entrypoint.sh "$@"')
    text = generated(secrets, copied["/k2secrets/redis.conf"]).read_text()
    lines = text.splitlines()
    assert {"port 0", "tls-port 6379", "user default off resetpass ~* &* +@all", "dir /data"} <= set(lines)
    named = [Path(line.split()[1]) for line in lines if line.startswith("tls-") and line.split()[0].endswith("-file")]
    assert {path.parent for path in named} == {conf.parent} and {path.name for path in named} <= {
        Path(target).name for target in copied
    }
    assert f"user k2jobs on >{passwords_of(secrets)['redis_user']} {REDIS_USER_RULES}" in lines
    assert "bind 127.0.0.1" not in lines, "other containers connect to it"
    health = argv(redis["healthcheck"]["test"][-1])
    assert "--tls" in health and option(health, "--cacert") == str(conf.parent / "ca.pem")


def test_secure_registry_stays_on_the_compose_network_and_reaches_kafka_over_sasl_ssl(
    secure_services: dict[str, dict[str, Any]], secrets: Path
) -> None:
    registry = secure_services["registry"]
    assert not registry.get("ports")
    for name in K2JOBS_SECURE[:-1]:
        assert env_of(secure_services[name])["K2_SCHEMA_REGISTRY_URL"].startswith("http://registry:"), name
    env = env_of(registry)
    assert env["APICURIO_KAFKA_COMMON_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert (env["APICURIO_KAFKA_COMMON_SSL_TRUSTSTORE_LOCATION"], True) in {(t, ro) for _, t, ro in mounts(registry)}
    [path] = env_files(registry)
    login = read_env(generated(secrets, path))["APICURIO_KAFKA_COMMON_SASL_JAAS_CONFIG"]
    assert "ScramLoginModule" in login and 'username="k2admin"' in login


def test_no_secret_is_written_in_the_compose_files(secrets: Path) -> None:
    leaked = set(passwords_of(secrets).values())
    for path in (COMPOSE, SECURE, ROOT / "docker-compose.cluster.yml"):
        text = path.read_text()
        assert not [password for password in leaked if password in text], path.name
        parsed = load_compose(path)
        for name, svc in parsed["services"].items():
            env = svc.get("environment") or {}
            env = dict(item.split("=", 1) for item in env) if isinstance(env, list) else env
            for key, value in env.items():
                if re.search(r"PASSWORD|SECRET|JAAS|BASIC_AUTH|_AUTH$", key):
                    assert re.fullmatch(r"\$\{[^}]+\}", str(value)), f"{path.name}: {name}.{key} is a literal"
        for value in strings(parsed):
            assert not re.search(r"password\s*[=:]\s*(?!\$\{)\S", value, re.IGNORECASE), (path.name, value)
            assert not re.search(r"LoginModule|jaas|--add-scram|--basic-auth|requirepass", value), (path.name, value)
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", value), (path.name, value)  # a URL with a password
            assert not re.search(r"\bon\s+>", value), (path.name, value)  # a Redis ACL password


def test_compose_secrets_init_writes_private_files_with_the_containers_paths(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    assert compose_secrets.main(["init", str(folder)]) == 0
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    for name in PRIVATE:
        assert oct((folder / name).stat().st_mode & 0o777) == "0o600", name
    assert oct((folder / "ca.pem").stat().st_mode & 0o777) == "0o644"  # the public CA, for any container user
    assert (folder / "ca.pem").read_bytes() == (folder / "secure" / "ca.pem").read_bytes()
    env = read_env(folder / "client.env")
    url = urlsplit(env["K2_REDIS_URL"])
    assert (url.scheme, url.username, url.hostname, url.port) == ("rediss", "k2jobs", "redis", 6379)
    assert f"ssl_ca_certs={CA_IN_CONTAINERS}" in url.query and "ssl_cert_reqs=required" in url.query
    assert env["K2_KAFKA_OPT_SECURITY_PROTOCOL"] == "SASL_SSL" and env["K2_KAFKA_OPT_SASL_USERNAME"] == "k2jobs"
    assert env["K2_KAFKA_OPT_SSL_CA_LOCATION"] == CA_IN_CONTAINERS and env["K2_KAFKA_BOOTSTRAP"] == "kafka:9092"
    conf = (folder / "redis.conf").read_text()
    assert "/run/k2tls/server.key" in conf and str(tmp_path) not in conf
    for name in PRIVATE:
        assert str(tmp_path) not in (folder / name).read_text(), f"{name} names a host path"
    jaas = {name.replace("KAFKA_", "").lower() for name in read_env(folder / "kafka.env")}
    assert jaas == {
        "listener_name_broker_scram___sha___512_sasl_jaas_config",
        "listener_name_controller_plain_sasl_jaas_config",
    }
    scram = shlex.split((folder / "kafka-scram.args").read_text())
    assert [arg.split(",")[0] for arg in scram[1::2]] == ["SCRAM-SHA-512=[name=k2admin", "SCRAM-SHA-512=[name=k2jobs"]
    sans = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(folder / "secure" / "server.pem")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert {f"DNS:{host}" for host in ("kafka", "redis", "flower", "registry")} <= set(re.findall(r"DNS:[^,\s]+", sans))
    # Made once: a second run keeps the passwords (and so every file).
    before = {name: (folder / name).read_text() for name in PRIVATE}
    assert compose_secrets.main(["init", str(folder)]) == 0
    assert before == {name: (folder / name).read_text() for name in PRIVATE}


def test_the_secrets_folder_stays_out_of_git_and_the_image() -> None:
    assert "/secrets/" in (ROOT / ".gitignore").read_text().split()
    assert "secrets" in (ROOT / ".dockerignore").read_text().split()  # not sent to the build
