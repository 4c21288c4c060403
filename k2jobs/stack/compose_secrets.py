"""docker-compose.secure.yml's secrets: `init` makes them once on the host, `grant` runs in the compose one-shot.

`python -m k2jobs.stack.compose_secrets init [DIR]` (DIR: $K2_SECRETS_DIR, else ./secrets) makes the stack's CA, server
certificate and passwords under DIR/secure/ (security.ensure_material, as `stack up --secure` does) and, from them,
the files each compose service reads: env files and configurations holding secrets (mode 0600, read by docker
compose on the host or copied by a root one-shot inside the containers) and DIR/ca.pem (public, mode 0644). Paths
inside these files are the containers' paths. A second run keeps the material and rewrites the files from it.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from k2jobs.config import Settings, load_settings
from k2jobs.errors import K2Error, StackError
from k2jobs.stack.secrets import (
    FLOWER_USER,
    SCRAM,
    Material,
    client_env,
    ensure_material,
    grant_kafka,
    java_argfile,
    kafka_properties,
    redis_conf,
    scram_arguments,
    write_env_file,
    write_private,
)

DEFAULT_DIR = "secrets"
HOSTS = ("kafka", "redis", "flower", "registry")  # the compose service names, which the server certificate names
# The clients' and brokers' listener. Not named SASL_SSL: the apache/kafka image's start script, seeing "SSL://" in
# KAFKA_ADVERTISED_LISTENERS, demands JKS-style keystore credential files and sets ssl.keystore.password, which
# Kafka refuses with a PEM keystore. Its protocol is SASL_SSL all the same (listener.security.protocol.map).
LISTENER = "BROKER"
CLIENT_TLS = Path("/etc/k2jobs/tls")  # ca.pem in the k2jobs and registry containers
KAFKA_SECRETS = Path("/etc/kafka/secrets")  # the broker's PEM keystore, the CA and the health check's admin login
REDIS_TLS = Path("/run/k2tls")  # redis.conf, the server certificate and key, the CA: copied there as Redis starts
REDIS_PORT = 6379
USAGE = "usage: python -m k2jobs.stack.compose_secrets init [DIR] | grant"


def kafka_env_name(name: str) -> str:
    """The apache/kafka image's environment variable for a server property (`_` is `__`, `-` is `___`, `.` is `_`)."""
    return "KAFKA_" + name.replace("_", "__").replace("-", "___").replace(".", "_").upper()


def broker_properties(material: Material) -> dict[str, str]:
    """security.kafka_properties as the kafka container sees them: its listener name, its paths."""
    lines = kafka_properties(replace(material, dir=KAFKA_SECRETS), LISTENER)
    return dict(line.split("=", 1) for line in lines)


def init(folder: Path) -> Material:
    """Make the stack's material under `folder` (once) and write the files the compose services read from it."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    material = ensure_material(folder, hosts=HOSTS)
    shutil.copyfile(material.ca, folder / "ca.pem")
    (folder / "ca.pem").chmod(0o644)  # bind-mounted into containers that run as other users
    passwords = material.passwords
    # Workers, Flower, beat, submit and grant: the k2jobs user's Kafka and Redis logins. Flower's own login is Flower's.
    client = client_env(replace(material, dir=CLIENT_TLS), "redis", REDIS_PORT, "kafka:9092")
    write_env_file(folder / "client.env", {k: v for k, v in client.items() if not k.startswith("K2_FLOWER_")})
    write_env_file(folder / "flower.env", {"FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{passwords['flower']}"})
    # The broker: the two JAAS logins (the admin's password) as the image's environment; the rest is in the YAML.
    broker = broker_properties(material)
    jaas = {name: value for name, value in broker.items() if name.endswith(".sasl.jaas.config")}
    write_env_file(folder / "kafka.env", {kafka_env_name(name): value for name, value in jaas.items()})
    admin_login = jaas[f"listener.name.{LISTENER.lower()}.{SCRAM.lower()}.sasl.jaas.config"]
    # The broker's health check, as the admin (copied into the broker's secrets volume by kafka-init).
    admin_properties = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": SCRAM,
        "sasl.jaas.config": admin_login,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": broker["ssl.truststore.location"],
    }
    write_private(folder / "kafka-admin.properties", "".join(f"{k}={v}\n" for k, v in admin_properties.items()))
    # kafka-init's `kafka-storage format` arguments adding both SCRAM users: a java @argfile, never a command line.
    write_private(folder / "kafka-scram.args", java_argfile(scram_arguments(material)))
    # The registry's kafkasql storage connects as the admin (it creates its own topics); grant creates k2jobs'.
    write_env_file(folder / "registry.env", {"APICURIO_KAFKA_COMMON_SASL_JAAS_CONFIG": admin_login})
    write_env_file(folder / "kafka-admin.env", {"K2_KAFKA_ADMIN_PASSWORD": passwords["kafka_admin"]})
    conf = redis_conf(replace(material, dir=REDIS_TLS), REDIS_PORT, Path("/data"), bind="* -::*")
    write_private(folder / "redis.conf", conf)
    return material


def grant(settings: Settings) -> None:
    """As the Kafka admin: create k2jobs' topics and give the k2jobs user its ACLs, as `stack up --secure` does."""
    if not settings.kafka_admin_password:
        raise StackError("K2_KAFKA_ADMIN_PASSWORD is not set (the grant service reads it from kafka-admin.env)")
    grant_kafka(settings, Material(CLIENT_TLS, {"kafka_admin": settings.kafka_admin_password}))


def main(argv: Sequence[str] | None = None) -> int:
    """`init [DIR]` or `grant`: 0 when done, 1 with the reason on stderr, 2 for a wrong command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["init"] and len(args) <= 2:
            folder = Path(args[1]) if len(args) == 2 else load_settings().secrets_dir or Path(DEFAULT_DIR)
            init(folder)
            print(f"compose secrets in {folder}/ (keep it private; docker-compose.secure.yml reads it)")
            return 0
        if args == ["grant"]:
            grant(load_settings())
            print("k2jobs' topics and the k2jobs user's ACLs are in place")
            return 0
    except K2Error as exc:
        print(f"k2jobs.stack.compose_secrets: {exc}", file=sys.stderr)
        return 1
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
