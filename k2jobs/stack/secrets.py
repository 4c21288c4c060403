"""A secure stack's material: its own CA, a server certificate, random passwords, and the settings clients need.

Everything is made once per stack folder, under `<stack>/secure/` (mode 0700), and kept. Secrets go to files
(mode 0600) and process environments, never to a command line or a log.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from k2jobs.config import Settings
from k2jobs.errors import StackError
from k2jobs.kafka.markers import COMMITS_TOPIC
from k2jobs.stack.processes import need_program

KAFKA_ADMIN = "k2admin"  # brokers between themselves, and the stack creating topics and ACLs (a super user)
KAFKA_USER = "k2jobs"  # clients and workers: only the ACLs below
REDIS_USER = "k2jobs"
REDIS_ADMIN = "k2admin"  # the stack only (shutdown, tests reading ACL LOG)
FLOWER_USER = "k2jobs"
SCRAM = "SCRAM-SHA-512"
PASSWORDS = ("kafka_admin", "kafka_user", "redis_admin", "redis_user", "flower")
# What the k2jobs user may do in Redis. Keys: Celery's queues (k2jobs.*), results and chord counters (celery*),
# pidbox (control) queues, kombu's bindings and unacked index, k2jobs' own (k2:*); pub/sub channels for events and
# broadcast control. Commands: those Celery, kombu, Flower and k2jobs were seen sending in a secure stack's loads,
# verifies, resumes, a watch, a worker killed -9 mid-job and Flower's pages (INFO commandstats), plus those their
# sources call on rarer paths (kombu restoring unacked messages, redis-py's lock); nothing else: no KEYS, FLUSH*,
# CONFIG, DEBUG, MONITOR, SHUTDOWN, ACL, MODULE or CLIENT KILL.
REDIS_USER_COMMANDS = (
    "ping hello auth select info time echo "
    "del unlink exists expire pexpire ttl pttl type "
    "get set setex setnx mget incr incrby "
    "hget hset hdel hgetall hmget hincrby hsetnx hvals hlen hexists "
    "lpush rpush lpop rpop brpop blpop llen lrange lrem ltrim "
    "sadd srem smembers sismember scard "
    "zadd zrem zrange zrevrange zrangebyscore zrevrangebyscore zcount zcard zscore "
    "publish subscribe psubscribe unsubscribe punsubscribe "
    "evalsha eval script|load script|exists "
    "multi exec discard watch unwatch"
)
REDIS_USER_RULES = "~celery* ~_kombu.* ~unacked* ~k2jobs.* ~*.celery.pidbox* ~k2:* &* -@all " + " ".join(
    f"+{command}" for command in REDIS_USER_COMMANDS.split()
)


@dataclass(frozen=True)
class Material:
    """Paths and passwords of one secure stack folder."""

    dir: Path
    passwords: dict[str, str]

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def key(self) -> Path:
        return self.dir / "server.key"

    @property
    def keystore(self) -> Path:
        """The server's PKCS#8 key and certificate in one PEM file (Kafka's `ssl.keystore.type=PEM`)."""
        return self.dir / "server-keystore.pem"


def secure_dir(stack_dir: Path) -> Path:
    return stack_dir / "secure"


def is_secure(stack_dir: Path) -> bool:
    """`stack up --secure` was run on this folder: it stays secure from then on."""
    return (secure_dir(stack_dir) / "passwords.json").exists()


def ensure_material(stack_dir: Path, hosts: tuple[str, ...] = ()) -> Material:
    """The stack's CA, server certificate and passwords: made the first time, read afterwards.

    The certificate names localhost, 127.0.0.1, this host, and `hosts` (docker compose's service names)."""
    folder = secure_dir(stack_dir)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    if not (folder / "server-keystore.pem").exists():
        _make_certificates(folder, hosts)
    path = folder / "passwords.json"
    if not path.exists():
        write_private(path, json.dumps({name: secrets.token_hex(24) for name in PASSWORDS}))
    return Material(folder, json.loads(path.read_text()))


def _make_certificates(folder: Path, hosts: tuple[str, ...]) -> None:
    """A CA of the stack's own, and a server certificate it signs for localhost, 127.0.0.1, this host and `hosts`."""
    openssl = need_program("openssl")
    names = sorted({"localhost", socket.gethostname(), socket.getfqdn(), *hosts})
    sans = ",".join([f"DNS:{name}" for name in names] + ["IP:127.0.0.1"])
    (folder / "server.ext").write_text(
        f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
    )
    steps = [
        # -noenc: unencrypted keys, PKCS#8 ("BEGIN PRIVATE KEY"), as Kafka's PEM keystore needs.
        ["req", "-x509", "-newkey", "rsa:2048", "-noenc", "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650"]
        + ["-subj", "/CN=k2jobs stack CA", "-addext", "basicConstraints=critical,CA:TRUE"]
        + ["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-noenc",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"]
        + ["-out", "server.pem", "-days", "825", "-extfile", "server.ext"],
    ]
    for step in steps:
        done = subprocess.run([openssl, *step], cwd=folder, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"making the stack's certificates failed (openssl {step[0]}): {done.stderr.strip()}")
    for name in ("ca.key", "server.key"):
        (folder / name).chmod(0o600)
    keystore = (folder / "server.key").read_text() + (folder / "server.pem").read_text()
    write_private(folder / "server-keystore.pem", keystore)


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, never readable by others even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def redis_url(material: Material, host: str, port: int, db: str = "0") -> str:
    """rediss:// as the k2jobs ACL user, verifying the server against the stack's CA."""
    password = quote(material.passwords["redis_user"], safe="")
    return f"rediss://{REDIS_USER}:{password}@{host}:{port}/{db}?ssl_cert_reqs=required&ssl_ca_certs={material.ca}"


def client_env(material: Material, redis_host: str, redis_port: int, bootstrap: str) -> dict[str, str]:
    """What a client or a worker on another host needs (with the CA file copied there)."""
    return {
        "K2_KAFKA_BOOTSTRAP": bootstrap,
        "K2_KAFKA_OPT_SECURITY_PROTOCOL": "SASL_SSL",
        "K2_KAFKA_OPT_SASL_MECHANISM": SCRAM,
        "K2_KAFKA_OPT_SASL_USERNAME": KAFKA_USER,
        "K2_KAFKA_OPT_SASL_PASSWORD": material.passwords["kafka_user"],
        "K2_KAFKA_OPT_SSL_CA_LOCATION": str(material.ca),
        "K2_REDIS_URL": redis_url(material, redis_host, redis_port),
        "K2_FLOWER_USER": FLOWER_USER,
        "K2_FLOWER_PASSWORD": material.passwords["flower"],
    }


def write_env_file(path: Path, env: dict[str, str]) -> Path:
    """KEY=VALUE lines, mode 0600, values quoted for a shell (`set -a; . FILE; set +a`) and docker compose's
    env_file alike (a Redis URL holds `&`)."""
    write_private(path, "".join(f"{name}={shlex.quote(value)}\n" for name, value in env.items()))
    return path


def redis_conf(material: Material, port: int, data: Path, bind: str = "127.0.0.1") -> str:
    """redis-server's configuration: TLS only, the default user off, the k2jobs user and an admin.

    `bind`: the addresses it listens on (a container's: every interface)."""
    return "\n".join(
        [
            f"bind {bind}",
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {material.cert}",
            f"tls-key-file {material.key}",
            f"tls-ca-cert-file {material.ca}",
            "tls-auth-clients no",  # clients authenticate with a password; TLS keeps it and the data private
            f"dir {data}",
            "appendonly yes",
            'save ""',
            "daemonize no",
            # Off: nobody logs in as default. Its rights stay whole because Redis 7.0 replays the AOF's MULTI/EXEC
            # blocks as the default user and drops those it may not run (redis/redis#14541, valkey#3983): a restart
            # would silently lose every transaction k2jobs and Celery wrote.
            "user default off resetpass ~* &* +@all",
            f"user {REDIS_USER} on >{material.passwords['redis_user']} {REDIS_USER_RULES}",
            f"user {REDIS_ADMIN} on >{material.passwords['redis_admin']} ~* &* +@all",
            "",
        ]
    )


def admin_redis_url(material: Material, url: str) -> str:
    """The same Redis as the admin user (the stack's own probes and shutdown)."""
    parts = urlsplit(url)
    netloc = f"{REDIS_ADMIN}:{quote(material.passwords['redis_admin'], safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def kafka_properties(material: Material, listener: str = "SASL_SSL") -> list[str]:
    """A node's security settings: SASL_SSL (SCRAM) for clients and brokers, SASL_SSL (PLAIN, the admin only) for
    the controllers, and the StandardAuthorizer with the admin as the only super user.

    `listener`: the name of the clients' and brokers' listener (its protocol is SASL_SSL whatever its name)."""
    admin, password = KAFKA_ADMIN, material.passwords["kafka_admin"]
    scram = (
        f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{admin}" password="{password}";'
    )
    plain = (
        f"org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{admin}" password="{password}" user_{admin}="{password}";'
    )
    return [
        f"inter.broker.listener.name={listener}",
        f"listener.security.protocol.map=CONTROLLER:SASL_SSL,{listener}:SASL_SSL",
        f"sasl.enabled.mechanisms={SCRAM}",
        f"sasl.mechanism.inter.broker.protocol={SCRAM}",
        f"listener.name.{listener.lower()}.scram-sha-512.sasl.jaas.config={scram}",
        # SCRAM users live in the metadata log, which controllers cannot read before they run: PLAIN here.
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.controller.plain.sasl.jaas.config={plain}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={material.keystore}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={material.ca}",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{admin}",
        "allow.everyone.if.no.acl.found=false",
    ]


def java_argfile(arguments: list[str]) -> str:
    """A java launcher @argfile holding `arguments`, one quoted per line (`java @FILE`: none of them on argv)."""
    return "".join(f'"{argument}"\n' for argument in arguments)


def scram_arguments(material: Material) -> list[str]:
    """`kafka-storage format` arguments that add both SCRAM users (secrets: pass them in a java @argfile)."""
    arguments = []
    for user, key in ((KAFKA_ADMIN, "kafka_admin"), (KAFKA_USER, "kafka_user")):
        arguments += ["--add-scram", f"{SCRAM}=[name={user},password={material.passwords[key]}]"]
    return arguments


def kafka_admin_options(material: Material) -> dict[str, str]:
    """librdkafka settings of the stack's own admin connection."""
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": SCRAM,
        "sasl.username": KAFKA_ADMIN,
        "sasl.password": material.passwords["kafka_admin"],
        "ssl.ca.location": str(material.ca),
    }


def k2jobs_acls() -> list[Any]:
    """The k2jobs user's Kafka ACLs: its topics (market.*, k2jobs.commits) to write, read back and describe, its
    transactional ids (k2jobs-*) and consumer groups (k2jobs-*). No Create: the stack's admin creates the topics."""
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    principal = f"User:{KAFKA_USER}"
    topic_operations = [AclOperation.WRITE, AclOperation.READ, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS]
    describe_write = [AclOperation.WRITE, AclOperation.DESCRIBE]
    wanted = [
        (ResourceType.TOPIC, "market.", ResourcePatternType.PREFIXED, topic_operations),
        (ResourceType.TOPIC, COMMITS_TOPIC, ResourcePatternType.LITERAL, topic_operations),
        (ResourceType.TRANSACTIONAL_ID, "k2jobs-", ResourcePatternType.PREFIXED, describe_write),
        (ResourceType.GROUP, "k2jobs-", ResourcePatternType.PREFIXED, [AclOperation.READ, AclOperation.DESCRIBE]),
    ]
    return [
        AclBinding(kind, name, pattern, principal, "*", operation, AclPermissionType.ALLOW)
        for kind, name, pattern, operations in wanted
        for operation in operations
    ]


def as_kafka_admin(settings: Settings, material: Material) -> Settings:
    """`settings` with the stack's Kafka admin (super user) as the Kafka client."""
    return replace(settings, kafka_options={**settings.kafka_options, **kafka_admin_options(material)})


def grant_kafka(settings: Settings, material: Material) -> None:
    """As the Kafka admin: create k2jobs' topics and give the k2jobs user its ACLs (k2jobs_acls), nothing more."""
    from confluent_kafka import KafkaException

    from k2jobs.kafka.topics import admin_client, ensure_topics

    admin_settings = as_kafka_admin(settings, material)
    ensure_topics(admin_settings, timeout_s=30)
    admin = admin_client(admin_settings)  # kept until the futures resolve: a destroyed client fails them
    for binding, future in admin.create_acls(k2jobs_acls(), request_timeout=30).items():
        try:
            future.result()
        except KafkaException as exc:
            raise StackError(f"creating the Kafka ACL {binding} failed: {exc.args[0]}") from exc
