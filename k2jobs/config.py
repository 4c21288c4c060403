"""One frozen Settings object, built once from the environment and passed down."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from k2jobs.errors import SettingsError

KAFKA_OPTION_PREFIX = "K2_KAFKA_OPT_"
# Every Kafka client k2jobs makes gets these unless a K2_KAFKA_OPT_* option says otherwise. librdkafka (2.10 on)
# re-bootstraps when it finds every broker down, and while none answers it does so over and over, without backoff
# (librdkafka issues #5088, #5546): each client logs a failed connect many times a second for as long as Kafka
# is away, and a client hammering a port in the ephemeral range can connect to itself and hold the port the
# broker needs to restart on. k2jobs' bootstrap list does not move, and a client that fails is replaced (a chunk's
# producer, the marker reader's consumers), so no re-bootstrap is needed; reconnects then back off, up to 1 s
# (Java's default; librdkafka's own 10 s would hold a client back that long after Kafka is back).
CLIENT_DEFAULTS = {"metadata.recovery.strategy": "none", "reconnect.backoff.max.ms": "1000"}
# librdkafka properties that only producers take (CONFIGURATION.md, "P"); consumers log a warning for each.
PRODUCER_ONLY = frozenset(
    {
        "transactional.id",
        "transaction.timeout.ms",
        "enable.idempotence",
        "enable.gapless.guarantee",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "queue.buffering.max.ms",
        "linger.ms",
        "message.send.max.retries",
        "retries",
        "queue.buffering.backpressure.threshold",
        "compression.codec",
        "compression.type",
        "compression.level",
        "batch.num.messages",
        "batch.size",
        "delivery.report.only.error",
        "sticky.partitioning.linger.ms",
        "request.required.acks",
        "acks",
        "request.timeout.ms",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "partitioner",
    }
)
VALUE_FORMATS = ("json", "avro")
TRANSACTION_TIMEOUT_MS = 60_000  # k2jobs' producer default, unless K2_KAFKA_OPT_TRANSACTION_TIMEOUT_MS says otherwise


@dataclass(frozen=True)
class Settings:
    """Everything k2jobs reads from its environment."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap: str = "127.0.0.1:9092"
    stack_dir: Path = Path(".k2stack")
    data_root: Path = Path(".")
    flower_port: int = 5555
    s3_port: int = 7070  # `stack up --s3`: the local S3-compatible server (VersityGW)
    partitions: int = 6
    # Replicas of the topics k2jobs creates; None: the smaller of 3 and the number of brokers.
    replication_factor: int | None = None
    chunk_rows: int = 200_000
    # Rows one task loads in one Kafka transaction: small files' chunks, and a key's consecutive small chunks,
    # share a task up to this many rows (each transaction has a fixed cost; a small chunk on its own would pay it).
    task_rows: int = 200_000
    batch_rows: int = 1_000
    visibility_timeout_s: int = 120
    # A chunk with no attempt queued, reserved or running for this long is enqueued again (the job supervisor).
    stall_after_s: int = 10
    stall_warn_s: int = 30  # `status --wait` says what it sees when no chunk moved for this long
    # Kafka or Redis errors: a chunk retries (exponential backoff with jitter) until it has retried this often
    # AND this long since its first failure, then fails with the reason. Counts alone run out in a minute of
    # broker restarts; time alone would give up at once after one long stall.
    chunk_retries: int = 8
    chunk_retry_s: int = 300
    # Where Avro schemas are registered (Confluent's API: Apicurio serves it under /apis/ccompat/v7).
    schema_registry_url: str = "http://127.0.0.1:8081/apis/ccompat/v7"
    value_format: str = "json"  # what submit writes unless --format says otherwise: json or avro
    # Celery beat's scheduled scan (`stack up --watch DIR`): a directory under the data root, and how often.
    watch_dir: str = ""
    watch_every_s: float = 10.0
    # `stack up` that starts a broker sends it this many seconds of k2jobs-like traffic (and on while the rest of the
    # stack starts) before returning: a fresh broker's JIT otherwise makes the first job much slower than later ones
    # (k2jobs/stack/warm_up.py).
    broker_warm_up_s: float = 10.0
    # Tests only: a chunk sleeps this long between sending its marker and committing (a window to kill it in).
    test_pause_before_commit_s: float = 0.0
    # How often a running chunk writes its rows done to Redis (what `status --wait` and the fault tests watch; the
    # test stack writes every 0.01 s so a 0.1 s chunk is seen part-way).
    progress_every_s: float = 0.1
    test_note_commits: bool = False  # K2_TEST_NOTE_COMMITS=1: say when a commit returns (k2:test:committed)
    # K2_TEST_STUCK_BEFORE_COMMIT=1: the first attempt to reach its commit hangs there, deaf to the soft time limit.
    test_stuck_before_commit: bool = False
    # Extra librdkafka properties (security.protocol, sasl.*, ssl.*), passed through as given.
    kafka_options: Mapping[str, str] = field(default_factory=dict)
    # K2_COMPILED_SEND=0: every message goes through confluent-kafka's produce(), never the compiled send.
    compiled_send: bool = True
    # The local stack: where Kafka's jars are cached (None: ~/.cache/k2jobs), its controller's port (None: the
    # broker's + 1), and the folder `python -m k2jobs.stack.compose_secrets init` writes (None: ./secrets).
    kafka_libs: Path | None = None
    kafka_controller_port: int | None = None
    secrets_dir: Path | None = None
    # docker-compose.secure.yml's one-shot grant service: the Kafka admin's password (from kafka-admin.env).
    kafka_admin_password: str = field(default="", repr=False)

    @property
    def kafka_call_timeout_s(self) -> float:
        """How long one blocking producer call (init, commit) may take: far inside the chunk time limit."""
        return max(5.0, self.visibility_timeout_s / 8)

    @property
    def transaction_timeout_s(self) -> float:
        """How long Kafka lets a chunk's transaction stay open before aborting it."""
        return int(self.kafka_options.get("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)) / 1000

    @property
    def abort_timeout_s(self) -> float:
        """How long aborting a chunk's transaction may wait: half the room between the soft and the hard time limit,
        so a chunk stopped by the soft limit while Kafka is away aborts (or gives up) and fails before the hard
        limit kills its process. An abort that gives up is no loss: the transaction times out, or the next attempt
        fences it."""
        soft, hard = self.chunk_time_limits_s
        return min(self.kafka_call_timeout_s, max(0.5, (hard - soft) / 2))

    @property
    def chunk_time_limits_s(self) -> tuple[int, int]:
        """(soft, hard) time limit of one chunk attempt: inside its transaction's timeout, so a chunk is
        stopped (soft) or killed (hard) before Kafka would abort its transaction under it."""
        timeout = self.transaction_timeout_s
        return max(2, int(timeout * 0.75)), max(3, int(timeout * 0.9))

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka configuration for any client: bootstrap, CLIENT_DEFAULTS, K2_KAFKA_OPT_* options, overrides."""
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap, **CLIENT_DEFAULTS}
        conf.update(self.kafka_options)
        conf.update(overrides)
        return conf

    def kafka_consumer_config(self, **overrides: Any) -> dict[str, Any]:
        """kafka_config without the producer-only K2_KAFKA_OPT_* options, which a consumer would warn about."""
        conf = self.kafka_config(**overrides)
        return {name: value for name, value in conf.items() if name not in PRODUCER_ONLY or name in overrides}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r} must be positive")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    port = _int(env, name, default)
    if port > 65535:
        raise SettingsError(f"{name}={port} is not a TCP port (1-65535)")
    return port


def _redis_url(env: Mapping[str, str], default: str) -> str:
    url = env.get("K2_REDIS_URL") or default
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(f"K2_REDIS_URL={url!r} is not a redis://, rediss:// or unix:// URL")
    return url


def _bootstrap(env: Mapping[str, str], default: str) -> str:
    servers = env.get("K2_KAFKA_BOOTSTRAP") or default
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"K2_KAFKA_BOOTSTRAP={servers!r} is not host:port[,host:port...]")
    return servers


def kafka_options_from(env: Mapping[str, str]) -> dict[str, str]:
    """`K2_KAFKA_OPT_SASL_MECHANISM=PLAIN` becomes `sasl.mechanism=PLAIN`."""
    return {
        name[len(KAFKA_OPTION_PREFIX) :].lower().replace("_", "."): value
        for name, value in env.items()
        if name.startswith(KAFKA_OPTION_PREFIX)
    }


def _value_format(env: Mapping[str, str], default: str) -> str:
    value = env.get("K2_FORMAT") or default
    if value not in VALUE_FORMATS:
        raise SettingsError(f"K2_FORMAT={value!r} must be one of {', '.join(VALUE_FORMATS)}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment (or the mapping given)."""
    env = os.environ if env is None else env
    defaults = Settings()
    return Settings(
        redis_url=_redis_url(env, defaults.redis_url),
        kafka_bootstrap=_bootstrap(env, defaults.kafka_bootstrap),
        stack_dir=Path(env.get("K2_STACK_DIR") or defaults.stack_dir).absolute(),
        data_root=Path(env.get("K2_DATA_ROOT") or os.getcwd()).resolve(),
        flower_port=_port(env, "K2_FLOWER_PORT", defaults.flower_port),
        s3_port=_port(env, "K2_S3_PORT", defaults.s3_port),
        partitions=_int(env, "K2_PARTITIONS", defaults.partitions),
        replication_factor=_int(env, "K2_REPLICATION_FACTOR", 0) or None,
        chunk_rows=_int(env, "K2_CHUNK_ROWS", defaults.chunk_rows),
        task_rows=_int(env, "K2_TASK_ROWS", defaults.task_rows),
        batch_rows=_int(env, "K2_BATCH_ROWS", defaults.batch_rows),
        visibility_timeout_s=_int(env, "K2_VISIBILITY_TIMEOUT", defaults.visibility_timeout_s),
        stall_warn_s=_int(env, "K2_STALL_WARN_S", defaults.stall_warn_s),
        chunk_retries=_int(env, "K2_CHUNK_RETRIES", defaults.chunk_retries),
        chunk_retry_s=_int(env, "K2_CHUNK_RETRY_S", defaults.chunk_retry_s),
        stall_after_s=_int(env, "K2_STALL_AFTER", defaults.stall_after_s),
        kafka_options=kafka_options_from(env),
        test_pause_before_commit_s=_seconds(env, "K2_TEST_PAUSE_BEFORE_COMMIT_S", 0.0),
        test_note_commits=_flag(env, "K2_TEST_NOTE_COMMITS", False),
        test_stuck_before_commit=_flag(env, "K2_TEST_STUCK_BEFORE_COMMIT", False),
        progress_every_s=_seconds(env, "K2_PROGRESS_EVERY_S", defaults.progress_every_s, positive=True),
        schema_registry_url=(env.get("K2_SCHEMA_REGISTRY_URL") or defaults.schema_registry_url).rstrip("/"),
        value_format=_value_format(env, defaults.value_format),
        watch_dir=env.get("K2_WATCH_DIR") or "",
        watch_every_s=_seconds(env, "K2_WATCH_EVERY_S", defaults.watch_every_s, positive=True),
        broker_warm_up_s=_seconds(env, "K2_BROKER_WARM_UP_S", defaults.broker_warm_up_s),
        compiled_send=_flag(env, "K2_COMPILED_SEND", defaults.compiled_send),
        kafka_libs=_path(env, "K2_KAFKA_LIBS"),
        kafka_controller_port=_port(env, "K2_KAFKA_CONTROLLER_PORT", 0) or None,
        secrets_dir=_path(env, "K2_SECRETS_DIR"),
        kafka_admin_password=env.get("K2_KAFKA_ADMIN_PASSWORD") or "",
    )


def redis_tls(url: str) -> dict[str, str] | None:
    """kombu's TLS options for a rediss:// URL (from its ssl_* parameters), None for redis://."""
    if not url.startswith("rediss://"):
        return None
    query = {name: values[-1] for name, values in parse_qs(urlsplit(url).query).items()}
    tls = {"ssl_cert_reqs": query.get("ssl_cert_reqs", "required")}
    tls.update({name: query[name] for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") if name in query})
    return tls


@functools.cache
def process_settings() -> Settings:
    """This process's Settings, read from its environment once (a worker's signals, celeryconfig)."""
    return load_settings()


def _seconds(env: Mapping[str, str], name: str, default: float, positive: bool = False) -> float:
    """A duration of 0 seconds or more (more than 0 when `positive`)."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number of seconds") from None
    if positive and not value > 0:  # also refuses nan
        raise SettingsError(f"{name}={raw!r} must be a number of seconds above 0")
    if not value >= 0:
        raise SettingsError(f"{name}={raw!r} must be 0 or more")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """1 (on) or 0 (off)."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw not in ("0", "1"):
        raise SettingsError(f"{name}={raw!r} must be 1 (on) or 0 (off)")
    return raw == "1"


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    return Path(raw).absolute() if raw else None


def masked_url(url: str) -> str:
    """A URL with its password replaced by ***, for anything printed or logged."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
